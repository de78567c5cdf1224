"""Does a sliced start help the action expert? A CPU-sized measurement on synthetic data.

    python -m benchmarks.expert_init [--backbone-steps 200] [--steps 150] [--seeds 0,1,2] [--json out.json]

GWP-0.5 starts its action expert from leading slices of the Wan backbone's weights. Here, at the
``debug`` size and on a synthetic task (below), for each seed:

1. train a shared-backbone ``debug`` model ``--backbone-steps`` steps on the joint objective —
   the "pretrained backbone";
2. build two ``debug-mot`` models whose visual stream is that backbone, one with a fresh expert
   and one with ``slice_backbone_into_expert`` (everything else equal: same seed, same fresh
   state/action encoders and head, which are narrower than the backbone's);
3. fine-tune both ``--steps`` steps on the same batches; report the action loss on a held-out
   set (fixed noise, fixed σ grid) before and after, and the training action loss's last 10
   steps.

The task: per sample a random observation latent, state and text token; the actions are a fixed
random function of the state and the observation's mean (a chunk ramping along P), the future
latents the observation plus a fixed drift — something both streams must read to solve.
Figures: BENCHMARKS.md, "The action expert".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from pretrain.action_expert import slice_backbone_into_expert
from pretrain.config import get_model_config
from pretrain.flow import FlowConfig, flow_loss, noise_batch
from pretrain.model import build_model

N_TRAIN, N_HELD, BATCH, DIMS = 256, 64, 16, 7


def make_task(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    n = N_TRAIN + N_HELD
    obs = torch.randn(n, 48, 1, 4, 4, generator=g)
    state = torch.randn(n, 32, generator=g)
    w_s, w_o = torch.randn(32, DIMS, generator=g) / 6, torch.randn(48, DIMS, generator=g)
    ramp = torch.linspace(0.2, 1.0, 48)[None, :, None]
    actions = torch.zeros(n, 48, 32)
    actions[..., :DIMS] = torch.tanh(state @ w_s + obs.mean(dim=(2, 3, 4)) @ w_o)[:, None] * ramp
    drift = torch.randn(1, 48, 1, 4, 4, generator=g) * 0.3
    return {
        "obs": obs,
        "future": obs + drift,
        "state": state,
        "actions": actions,
        "text": torch.randn(n, 1, 512, generator=g),
        "mask": (torch.arange(32) < DIMS).expand(n, 32),
    }


def step_loss(model, task, idx, flow, g, lambda_v: float = 1.0):
    nb = noise_batch(flow, task["actions"][idx], task["future"][idx], generator=g)
    out = model(
        task["obs"][idx],
        future_latent_BCKHW=nb.video_noisy_BCKHW,
        state_B32=task["state"][idx],
        embodiment_id_B=torch.zeros(len(idx), dtype=torch.long),
        actions_BP32=nb.actions_noisy_BP32,
        sigma_action_B=nb.sigma_action_B,
        sigma_video_B=nb.sigma_video_B,
        text_BLD=task["text"][idx],
    )
    return flow_loss(flow, out.action_velocity_BP32, nb.action_target_BP32, task["mask"][idx],
                     out.video_velocity_BCKHW, nb.video_target_BCKHW)  # fmt: skip


def held_out_action_loss(model, task, flow) -> float:
    idx = torch.arange(N_TRAIN, N_TRAIN + N_HELD)
    with torch.no_grad():
        losses = [
            step_loss(model, task, idx, flow, torch.Generator().manual_seed(s)).action.item()
            for s in range(4)
        ]
    return sum(losses) / len(losses)


def train(model, task, flow, steps: int, seed: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, N_TRAIN, (BATCH,), generator=g)
        loss = step_loss(model, task, idx, flow, g)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        out.append(loss.action.item())
    return out


def run(seed: int, backbone_steps: int, steps: int) -> dict[str, float]:
    flow, task = FlowConfig(), make_task(seed)
    torch.manual_seed(seed)
    dense = build_model(get_model_config("debug"))
    train(dense, task, flow, backbone_steps, seed)
    visual = {
        k: v
        for k, v in dense.state_dict().items()
        if not k.startswith(("state_in.", "action_in.", "action_out."))
    }
    row: dict[str, float] = {"seed": seed}
    for init in ("fresh", "sliced"):
        torch.manual_seed(10_000 + seed)
        mot = build_model(dataclasses.replace(get_model_config("debug-mot"), action_expert_init=init))
        mot.load_state_dict(visual, strict=False)
        if init == "sliced":
            slice_backbone_into_expert(mot)
        row[f"{init}_held_before"] = held_out_action_loss(mot, task, flow)
        curve = train(mot, task, flow, steps, seed + 1)
        row[f"{init}_train_last10"] = sum(curve[-10:]) / len(curve[-10:])
        row[f"{init}_held_after"] = held_out_action_loss(mot, task, flow)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0, rows = time.perf_counter(), []
    for s in (int(v) for v in args.seeds.split(",")):
        rows.append(run(s, args.backbone_steps, args.steps))
        print(json.dumps({k: round(v, 4) for k, v in rows[-1].items()}), flush=True)
    keys = [k for k in rows[0] if k != "seed"]
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in keys}
    print(json.dumps({"mean": mean, "seconds": round(time.perf_counter() - t0, 1)}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "mean": mean}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
