"""Latency of the GWP policy: action-only (cached context) vs joint decoding, same model, one run.

    python -m benchmarks.bench_latency [--repeats 30] [--threads 1] [--device cpu]

Batch 1, 10 Euler steps, fp32 (bf16 on CUDA with ``--bf16``). For each geometry the two samplers
run interleaved (action-only, joint, action-only, …) after warm-up, so machine load hits both
alike; p50 and p95 of the wall time per call are reported, plus the uncached action-only sampler.
Inputs are latents (the codec is outside the timed region: with the pixel codec it is a reshape,
with a VAE the joint path would additionally pay for decoding K frames).

Token geometry (``ModelConfig.token_counts``), C = 1 state token + h·w observation tokens,
A = P action tokens, V = K′·h·w with K′ future latent frames:

* ``debug``: the debug preset as is; a 64×64 composed image, pixel codec (4×) → 16×16 latent,
  patch (1, 2, 2) → 8×8 = 64 tokens per frame, per-frame geometry: C = 65, A = 48, V = 4·64 = 256.
* ``paper-geometry``: the wan22-5b sequence layout on CPU with reduced width and depth (256 wide,
  4 layers; the full 3072×30 model is GPU only, ``--paper-width 3072 --paper-layers 30`` there):
  384×320 (W×H) image, the 16× VAE → 24×20 latent, patch (1, 2, 2) → 12×10 = 120 tokens per
  frame. GWP's clip geometry (the preset's default: 4 future frames → one latent frame):
  C = 121, A = 48, V = 120, 289 tokens; ``paper-per-frame`` is the same model with every future
  frame its own latent frame (V = 480), the layout used before, for comparison.

Token-pass bound: joint runs C + A + V tokens in each of the 10 steps; action-only runs C once
and A in each step: 10·(C + A + V) / (C + 10·A) — 4.8 at GWP's geometry, 10.8 per frame.
Attention cost grows faster than the token count, so the achieved ratio may exceed it;
per-call overheads (small models) push it below. ``--json PATH`` writes the rows as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from policy.inference import Context, sample_actions, sample_joint
from pretrain.config import ModelConfig, get_model_config
from pretrain.model import build_model


@dataclass(frozen=True)
class Geometry:
    name: str
    model: ModelConfig
    latent_hw: tuple[int, int]  # (h, w) of the latent frame, before the (2, 2) patch

    def tokens(self) -> tuple[int, int, int]:
        t = self.model.token_counts(*self.latent_hw)
        return t["context"], t["action"], t["video"]


def geometries(width: int = 256, layers: int = 4) -> list[Geometry]:
    wan = get_model_config("wan22-5b")
    reduced = dataclasses.replace(
        wan, name="wan22-5b-geometry-reduced", dim=width, heads=width // 64, head_dim=64, ffn_dim=4 * width,
        layers=layers, text_dim=512, mlp_hidden=256,
    )  # fmt: skip
    per_frame = dataclasses.replace(reduced, video_geometry="per_frame")
    return [
        Geometry("debug", get_model_config("debug"), (64 // 4, 64 // 4)),
        Geometry(
            f"paper-geometry (wan22-5b layout, {width}×{layers} layers)", reduced, (320 // 16, 384 // 16)
        ),
        Geometry(
            f"paper-per-frame (wan22-5b layout, {width}×{layers} layers)", per_frame, (320 // 16, 384 // 16)
        ),
    ]


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def measure(
    geo: Geometry, repeats: int, warmup: int, device: torch.device, dtype: torch.dtype, steps: int = 10
) -> dict:
    torch.manual_seed(0)
    model = build_model(geo.model, device).to(dtype).eval()
    cfg = geo.model
    h, w = geo.latent_hw
    g = torch.Generator(device=device).manual_seed(0)
    ctx = Context(
        obs_latent_BC1hw=torch.randn(1, cfg.latent_channels, 1, h, w, generator=g, device=device).to(dtype),
        state_B32=torch.randn(1, 32, generator=g, device=device).to(dtype),
        embodiment_id_B=torch.zeros(1, dtype=torch.long, device=device),
        text_BLD=torch.randn(1, 1, cfg.text_dim, generator=g, device=device).to(dtype),
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs: dict[str, Callable[[], object]] = {
        "action": lambda: sample_actions(model, ctx, num_steps=steps, generator=g),
        "joint": lambda: sample_joint(model, ctx, num_steps=steps, generator=g),
        "action_uncached": lambda: sample_actions(model, ctx, num_steps=steps, generator=g, use_cache=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(warmup + repeats):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    C, A, V = geo.tokens()
    out = {"geometry": geo.name, "C": C, "A": A, "V": V, "token_ratio": steps * (C + A + V) / (C + steps * A)}
    for name, xs in times.items():
        out[name] = {"p50": percentile(xs, 50), "p95": percentile(xs, 95), "mean": statistics.fmean(xs)}
    out["ratio_p50"] = out["joint"]["p50"] / out["action"]["p50"]
    return out


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| geometry | C / A / V tokens | action-only p50 / p95 (ms) | joint p50 / p95 (ms) | "
        "uncached action-only p50 (ms) | joint / action-only (p50) | token-pass bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def ms(k: str, q: str, r: dict = r) -> str:
            return f"{1e3 * r[k][q]:.1f}"

        lines.append(
            f"| {r['geometry']} | {r['C']} / {r['A']} / {r['V']} | {ms('action', 'p50')} / {ms('action', 'p95')} | "
            f"{ms('joint', 'p50')} / {ms('joint', 'p95')} | {ms('action_uncached', 'p50')} | "
            f"{r['ratio_p50']:.2f}× | {r['token_ratio']:.2f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: no contention on shared cores)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and activations (CUDA)")
    p.add_argument("--only", choices=["debug", "paper"], default=None)
    p.add_argument("--paper-width", type=int, default=256, help="width of the reduced wan22-5b-layout model")
    p.add_argument("--paper-layers", type=int, default=4, help="layers of the reduced wan22-5b-layout model")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    geos = geometries(args.paper_width, args.paper_layers)
    if args.only:
        geos = [g for g in geos if g.name.startswith(args.only)]
    rows = [measure(g, args.repeats, args.warmup, device, dtype) for g in geos]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    header = (
        f"Policy latency, batch 1, 10 Euler steps, {str(dtype).removeprefix('torch.')}, {where}, "
        f"{args.repeats} interleaved runs each"
    )
    print(markdown(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
