"""Does pretraining learn? Meta-World expert rollouts → curated shards → ``pipelines.pretrain`` → PNG strip.

    python -m benchmarks.pretrain_learning --out runs/pretrain-learning [--episodes 24] [--steps 300]

Top to bottom:

1. roll out ``--episodes`` scripted-expert demonstrations over a few Meta-World tasks
   (64² corner + wrist cameras, ``policy.envs.rollout_expert``);
2. curate them in memory with curation's own pure stages (no Ray; the ``debug`` curation preset:
   chunk 8, frame stride 2, K = 2 future frames, one composed 64×64 image) into a shard folder —
   :func:`curation.in_memory.curate_in_memory`, also used by the tests;
3. pretrain the ``debug`` model with the pixel codec (``python -m pipelines.pretrain``, one
   process, fp32 CPU, ZeRO-2) for ``--steps`` steps, constant learning rate after warm-up;
4. report the video loss at the start and the end (mean of the first / last 10 steps) and the
   wall time, and save ``<out>/future_frames.png``: per sample a row of
   [current frame | real future frames | predicted future frames (10 Euler steps, conditioned on
   the real actions)], decoded with the codec; ``<out>/learning.json`` holds the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from curation.in_memory import curate_in_memory
from schemas import Episode

TASKS = ("drawer-open-v3", "button-press-topdown-v3", "reach-v3", "door-open-v3")


def metaworld_episodes(n: int, image_size: int = 64, tasks: Sequence[str] = TASKS) -> list[Episode]:
    """``n`` successful expert episodes, round-robin over ``tasks``, seeds 0, 1, 2, …"""
    # Measured here: importing triton (which torch.optim/DeepSpeed pull in lazily) for the first time
    # after MuJoCo has made its EGL context segfaults; importing it first is harmless.
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401
    from policy.envs import MetaWorldConfig, rollout_expert

    cfg = MetaWorldConfig(image_size=image_size, steps_after_success=4)
    episodes: list[Episode] = []
    seed = 0
    while len(episodes) < n:
        for task in tasks:
            ep = rollout_expert(task, seed, cfg)
            if ep is not None and len(episodes) < n:
                episodes.append(ep)
        seed += 1
        if seed > 10 * n:
            raise RuntimeError(f"only {len(episodes)} of {n} expert rollouts succeeded")
    return episodes


def to_uint8(frames_B3FHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] frames → uint8 [B, F, H, W, 3]."""
    x = ((frames_B3FHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).numpy()


def prediction_strip(
    run_dir: Path, data: Path, out_png: Path, rows: int = 4, seed: int = 0
) -> dict[str, float]:
    """Decode predicted vs real future frames of a few samples into one PNG; returns pixel errors."""
    import imageio.v3 as iio

    from policy.model import load_backbone
    from pretrain.codec import make_codec
    from pretrain.data import LoaderConfig, ShardLoader
    from pretrain.model import build_model
    from pretrain.objective import ObjectiveConfig, PretrainObjective, sample_future

    meta = json.loads((run_dir / "final" / "config.json").read_text())
    mcfg, sd = load_backbone(run_dir / "final")
    model = build_model(mcfg).eval()
    model.load_state_dict(sd)
    codec_kw = {k: v for k, v in meta["codec"].items() if k not in ("name", "latent_grid")}
    codec = make_codec(meta["codec"]["name"], **codec_kw)
    objective = PretrainObjective(ObjectiveConfig.from_dict(meta["objective"]), codec, mcfg.text_dim)
    batch = next(iter(ShardLoader(data, LoaderConfig(batch_size=rows, seed=seed + 1))))
    g = torch.Generator().manual_seed(seed)
    pred = codec.decode(sample_future(model, objective, batch, generator=g))
    uncond = codec.decode(sample_future(model, objective, batch, with_actions=False, generator=g))
    real = batch["future_frames"]
    obs = to_uint8(batch["obs_frames"][:, :, None])[:, 0]
    real_u8, pred_u8 = to_uint8(real), to_uint8(pred)
    gap = np.full((obs.shape[1], 4, 3), 255, np.uint8)
    lines = []
    for b in range(real_u8.shape[0]):
        tiles = [obs[b], gap, *real_u8[b], gap, *pred_u8[b]]
        lines.append(np.concatenate(tiles, axis=1))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out_png, np.concatenate(lines, axis=0))
    copy_last = batch["obs_frames"][:, :, None].expand_as(real)  # baseline: "nothing moves"
    return {
        "pixel_mse_pred": float(torch.mean((pred.clamp(-1, 1) - real) ** 2)),
        "pixel_mse_unconditioned": float(torch.mean((uncond.clamp(-1, 1) - real) ** 2)),
        "pixel_mse_copy_current": float(torch.mean((copy_last - real) ** 2)),
    }


def main(argv: list[str] | None = None) -> int:
    from pipelines import pretrain

    p = argparse.ArgumentParser(prog="pretrain_learning", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--preset", default="debug")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--codec-patch", type=int, default=2)
    p.add_argument(
        "--model-override",
        action="append",
        default=None,
        help="ModelConfig FIELD=VALUE for pipelines.pretrain (default: heads=2, head_dim=32)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = args.out / "shards"
    if not (data / "meta" / "manifest.json").is_file():
        curate_in_memory(metaworld_episodes(args.episodes), data)
    t_data = time.perf_counter() - t0
    run_dir = args.out / "run"
    overrides = args.model_override if args.model_override is not None else ["heads=2", "head_dim=32"]
    t1 = time.perf_counter()
    pretrain.main(
        [
            "--preset", args.preset, "--data", str(data), "--out", str(run_dir),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--warmup-steps", "10", "--ckpt-every", "0", "--no-progress", "--threads", str(args.threads),
            "--codec-patch", str(args.codec_patch),
            *[a for o in overrides for a in ("--model-override", o)],
        ]
    )  # fmt: skip
    t_train = time.perf_counter() - t1
    hist = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    video = [h["video_loss"] for h in hist]
    figures = {
        "episodes": args.episodes,
        "samples": json.loads((data / "meta" / "manifest.json").read_text())["counts"]["samples"],
        "steps": len(hist),
        "batch_size": args.batch_size,
        "video_loss_first10": float(np.mean(video[:10])),
        "video_loss_last10": float(np.mean(video[-10:])),
        "data_s": t_data,
        "train_s": t_train,
        "threads": args.threads,
        "codec_patch": args.codec_patch,
        "model_overrides": overrides,
        **prediction_strip(run_dir, data, args.out / "future_frames.png"),
    }
    (args.out / "learning.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
