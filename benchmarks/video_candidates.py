"""Which CPU model makes predicted video worth looking at? Candidates side by side on the demo's shards.

    python -m benchmarks.video_candidates run --data runs/demo/shards --out runs/video-candidates \\
        --candidate debug --candidate cpu-video --budget-s 360
    python -m benchmarks.video_candidates table --out runs/video-candidates   # the markdown table

Top to bottom, per candidate (one process each, so two can run side by side on two cores):

1. the demo fine-tune's data: the shards' rows with actions, the same episode split as
   ``pipelines.finetune`` (``--heldout-fraction`` 0.1, seed 0: :func:`policy.heldout.split_shards`);
2. a policy of the candidate's model preset (plus its overrides) from random init, trained with the
   joint loss (λ_a = 5, λ_v = 1 as the demo) by AdamW, lr ``--lr`` after a 20-step warm-up, batch
   ``--batch-size``, an fp32 EMA of decay 0.99 (the demo's train preset), in a plain torch loop:
   the same time budget for every candidate (``--budget-s`` seconds of this process's CPU time on
   one thread, so that the shared machine's load does not decide the comparison; ``--max-steps``
   caps it too), so a bigger model pays for its size with fewer steps;
3. the EMA weights scored by :func:`policy.openloop.evaluate_openloop` on the held-out episodes:
   PSNR and SSIM of the predicted future frames against the real ones, the same for the observation
   repeated (the baseline to beat), and the action MSE (so video does not cost actions);
4. ``<out>/<candidate>/result.json`` and the open-loop report (``openloop.md``, ``frames.png``).

Candidates are named in :data:`CANDIDATES`: a model preset (``pretrain/config.py``) plus
``ModelConfig`` and ``FlowConfig`` overrides. The table records the machine load at the start and
end of each run, since the budget is wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.provenance import git_commit

RESULT_JSON = "result.json"


@dataclass(frozen=True)
class Candidate:
    preset: str  # model preset (pretrain/config.py)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    flow: dict[str, Any] = field(default_factory=dict)  # FlowConfig overrides
    note: str = ""


# the width the w128 candidates share: 128 wide, 4 heads × 32 (debug is 64 wide, 4 heads × 16)
_W128 = {"dim": 128, "heads": 4, "head_dim": 32, "ffn_dim": 256, "mlp_hidden": 128}
_W128_RESIDUAL = {**_W128, "video_residual": True}

CANDIDATES: dict[str, Candidate] = {
    "debug": Candidate("debug", note="the demo's model today: 64 wide, 4 heads × 16"),
    "debug-residual": Candidate(
        "debug", {"video_residual": True}, note="debug, target = future − observation"
    ),
    "w128-residual": Candidate("debug", _W128_RESIDUAL, note="128 wide, 4 heads × 32, residual"),
    "w128": Candidate("debug", _W128, note="128 wide, 4 heads × 32, absolute target"),
    "w192-residual": Candidate(
        "debug",
        {"dim": 192, "heads": 3, "head_dim": 64, "ffn_dim": 384, "mlp_hidden": 128, "video_residual": True},
        note="192 wide, 3 heads × 64, residual",
    ),
    "w128-residual-shift1": Candidate(
        "debug",
        _W128_RESIDUAL,
        {"video_shift": 1.0},
        note="w128-residual with video timestep shift 1 (instead of 2)",
    ),
    "w128-residual-patch1": Candidate(
        "debug",
        {**_W128_RESIDUAL, "patch": (1, 1, 1)},
        note="w128-residual with 1×1 latent patches (4× the video tokens)",
    ),
    "cpu-video": Candidate("cpu-video", note="the kept preset: debug, residual, zero-initialised video head"),
}


def load_avg() -> float:
    return os.getloadavg()[0]


def run_candidate(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipelines.finetune import data_settings, rows_with_actions
    from policy.heldout import split_shards
    from policy.model import GWPPolicyModel, PolicyConfig
    from policy.openloop import OpenLoopConfig, evaluate_openloop, write_report
    from pretrain.config import get_model_config
    from pretrain.data import LoaderConfig, ShardLoader, ShardSet
    from pretrain.flow import FlowConfig

    cand = CANDIDATES[name]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shards = ShardSet.open(args.data)
    settings = data_settings(shards)
    shards, _ = rows_with_actions(shards)
    split = split_shards(shards, args.heldout_fraction, 0)
    if split.heldout is None:
        raise SystemExit("video_candidates: --heldout-fraction leaves no held-out episode")
    mcfg = replace(
        get_model_config(cand.preset),
        chunk=settings["chunk"],
        num_future=settings["num_future"],
        **cand.model,
    )
    model = GWPPolicyModel(
        PolicyConfig(
            model=mcfg,
            flow=FlowConfig(**cand.flow),
            codec="pixel",
            codec_kwargs={"patch": 4},
            image=settings["image"],
            text=settings["text"],
            embodiments=settings["embodiments"],
            norm=settings["norm"],
        )
    )
    model.norm_stats = settings["stats"]
    params = sum(p.numel() for p in model.transformer.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False)
    loader = ShardLoader(split.train, LoaderConfig(batch_size=args.batch_size, seed=args.seed))
    commit = git_commit()  # at the start: the code that ran, whatever is committed meanwhile
    load0, t0, c0 = load_avg(), time.perf_counter(), time.process_time()
    steps, losses = 0, []
    model.train()
    for batch in loader:
        lr = args.lr * min(1.0, (steps + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts = model.joint_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 0.01)
        steps += 1
        losses.append((float(parts["action_loss"]), float(parts["video_loss"])))
        if time.process_time() - c0 >= args.budget_s or steps >= args.max_steps:
            break
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    metrics, pictures = evaluate_openloop(ema, split.heldout, OpenLoopConfig(max_samples=args.samples))
    eval_s = time.perf_counter() - t1
    out = Path(args.out) / name
    write_report(out, metrics, pictures)
    tail = losses[-20:]
    result = {
        "candidate": name,
        "preset": cand.preset,
        "model_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in cand.model.items()},
        "flow_overrides": cand.flow,
        "note": cand.note,
        "transformer_params": params,
        "steps": steps,
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "eval_s": round(eval_s, 1),
        "final_action_loss": sum(a for a, _ in tail) / len(tail),
        "final_video_loss": sum(v for _, v in tail) / len(tail),
        "heldout_samples": metrics["samples"],
        "psnr": metrics["video"]["psnr"],
        "ssim": metrics["video"]["ssim"],
        "repeat_psnr": metrics["video"]["copy_baseline"]["psnr"],
        "repeat_ssim": metrics["video"]["copy_baseline"]["ssim"],
        "action_mse": metrics["action_mse"],
        "commit": commit,
        "machine": f"{platform.node()} {os.cpu_count()} cores, {args.threads} thread(s)",
        "load_start": round(load0, 2),
        "load_end": round(load_avg(), 2),
        "command": " ".join(["python -m benchmarks.video_candidates", *sys.argv[1:]]),
    }
    (out / RESULT_JSON).write_text(json.dumps(result, indent=2))
    return result


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob(f"*/{RESULT_JSON}"))]
    if not rows:
        raise SystemExit(f"video_candidates: no {RESULT_JSON} under {out}")
    lines = [
        "| candidate | params | steps | train CPU s (wall s) | PSNR dB (repeat) | SSIM (repeat) | action MSE "
        "| commit | load start/end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["ssim"]):
        lines.append(
            f"| {r['candidate']} ({r['note']}) | {r['transformer_params'] / 1e6:.2f} M | {r['steps']} | "
            f"{r['train_cpu_s']:.0f} ({r['train_s']:.0f}) | {r['psnr']:.2f} ({r['repeat_psnr']:.2f}) | {r['ssim']:.3f} "
            f"({r['repeat_ssim']:.3f}) | {r['action_mse']:.4f} | `{r['commit']}` | {r['load_start']}/{r['load_end']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.video_candidates", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and score candidates, one after the other")
    r.add_argument("--data", required=True, help="curated shards (the demo's runs/demo/shards)")
    r.add_argument("--out", required=True)
    r.add_argument("--candidate", action="append", choices=sorted(CANDIDATES), required=True)
    r.add_argument("--budget-s", type=float, default=360.0, help="training CPU seconds per candidate")
    r.add_argument("--max-steps", type=int, default=100_000)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--heldout-fraction", type=float, default=0.1)
    r.add_argument("--samples", type=int, default=128, help="held-out samples scored")
    t = sub.add_parser("table", help="the markdown table of every result under --out")
    t.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "table":
        print(table(Path(args.out)))
        return 0
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data}: no such folder")
    for name in args.candidate:
        res = run_candidate(name, args)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
