"""How far are the ``paper`` curation preset's stored sample frames from the raw camera frames?

    python -m benchmarks.paper_frames --out runs/paper-frames [--episodes 4] [--image-size 256]

Training reads a sample's 1+K composed frames back from the shard; at inference the policy sees
the raw camera frames. A lossy store is a train/inference skew, measured here on what the preset
really stores. Top to bottom:

1. roll out ``--episodes`` scripted-expert demonstrations (Meta-World, the demo's tasks in
   turn; ``--image-size``² corner and wrist cameras);
2. for every window of the ``paper`` geometry (Δ = 12, K = 4, stride 12) compose the 1+K views
   at the preset's 384×320 (``schemas.compose.compose_views``), the raw frames;
3. store them as each format would (``schemas.frames.encode_sample_frames``): the preset's own
   ``VideoConfig`` (format, codec, CRF) and, for comparison, the other stores (PNG; H.264 at the
   encoder default CRF), decode them back and take the PSNR of every frame against the raw
   frame (dB, 100 = identical) and the stored bytes per sample;
4. print a table and write ``<out>/paper_frames.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from curation.config import get_preset
from schemas.compose import compose_views
from schemas.frames import decode_sample_frames, encode_sample_frames

TASKS = ("drawer-open-v3", "button-press-topdown-v3")


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 frames in dB; 100 when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def raw_windows(episodes: int, image_size: int) -> list[np.ndarray]:
    """The composed raw frames ``[1+K, H, W, 3]`` of every paper-geometry window."""
    from policy.envs import MetaWorldConfig, rollout_expert

    preset = get_preset("paper")
    w, v = preset.windows, preset.video
    out, seed = [], 0
    while len(out) == 0 or seed < episodes:
        task = TASKS[seed % len(TASKS)]
        ep = rollout_expert(task, seed, MetaWorldConfig(task=task, image_size=image_size))
        seed += 1
        if ep is None:
            continue
        views = {role: ref.array for role, ref in ep.cameras.items()}
        composed = compose_views(views, v.width, v.height, v.fit)
        span = w.num_future * w.frame_stride + 1
        for t in range(0, ep.length - span + 1, w.stride):
            out.append(composed[[t + k * w.frame_stride for k in range(w.num_future + 1)]])
    return out


def measure(windows: list[np.ndarray], fmt: str, codec: str, crf: int | None, fps: float) -> dict:
    psnrs, sizes = [], []
    for frames in windows:
        data = encode_sample_frames(frames, fmt, fps=fps, codec=codec, crf=crf)
        back = decode_sample_frames(data, fmt)
        psnrs += [psnr_db(a, b) for a, b in zip(back, frames, strict=True)]
        sizes.append(len(data))
    p = np.asarray(psnrs)
    return {
        "format": fmt,
        "codec": codec if fmt == "mp4" else "",
        "crf": crf,
        "psnr_mean_db": round(float(p.mean()), 2),
        "psnr_min_db": round(float(p.min()), 2),
        "psnr_p05_db": round(float(np.percentile(p, 5)), 2),
        "bytes_per_sample": int(np.mean(sizes)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/paper-frames")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args(argv)
    preset = get_preset("paper")
    v = preset.windows, preset.video
    fps = 80.0 / preset.windows.frame_stride  # Meta-World's 80 Hz, one stored frame per Δ steps
    t0 = time.perf_counter()
    windows = raw_windows(args.episodes, args.image_size)
    stores = [(preset.video.format, preset.video.codec, preset.video.crf), ("png", "h264", None)]
    stores += [("mp4", "h264", None), ("mp4", "h264", 0)]
    rows = []
    for fmt, codec, crf in dict.fromkeys(stores):
        rows.append(measure(windows, fmt, codec, crf, fps))
        rows[-1]["preset"] = (fmt, codec, crf) == (preset.video.format, preset.video.codec, preset.video.crf)
    result = {
        "preset": "paper",
        "size": [v[1].width, v[1].height],
        "windows": len(windows),
        "frames_per_window": preset.windows.num_future + 1,
        "image_size": args.image_size,
        "stores": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_frames.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(windows)} windows of 5 frames at {v[1].width}×{v[1].height}")
    print("| store | preset | PSNR mean / p05 / min (dB) | bytes per sample |")
    print("|---|---|---|---|")
    for r in rows:
        name = r["format"] + (
            f" {r['codec']} crf {r['crf'] if r['crf'] is not None else 'default'}" if r["codec"] else ""
        )
        print(
            f"| {name} | {'yes' if r['preset'] else ''} | {r['psnr_mean_db']} / {r['psnr_p05_db']} / "
            f"{r['psnr_min_db']} | {r['bytes_per_sample']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
