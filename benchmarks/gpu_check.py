"""GPU check of the real GWP geometry: ``wan22-5b`` in bf16 with random weights, one command.

    python -m benchmarks.gpu_check --out gpu_check.json            # one GPU, ≤ 10 minutes
    python -m benchmarks.gpu_check --reduced --out /tmp/check.json  # CPU: same code, small width

What it does, top to bottom (the figures go to ``--out`` as JSON and to stdout):

1. **Geometry** — the ``wan22-5b`` preset at GWP's clip geometry and a 384×320 image (Wan2.2
   VAE: 16× spatial, 4 future frames → one latent frame): C = 121, A = 48, V = 120 tokens.
   ``--reduced`` keeps this token layout and shrinks only width and depth (CPU, tests).
2. **Training** — a few steps of the fine-tuning loss (``GWPPolicyModel.joint_loss``: joint
   action + video flow matching) through the DeepSpeed engine at ZeRO-2 with activation
   checkpointing, bf16 on CUDA (fp32 on CPU), on synthetic latent batches (what a latent cache
   feeds the trainer; the VAE is not run). One GPU cannot hold the 5 B model's full Adam state
   at ZeRO-2 (~16 bytes per parameter), so the training model keeps the full width and as many
   of the 30 layers as fit (``--train-layers``, default from free memory as
   ``bench_train.auto_layers``); the JSON says how many. Step time (median), tokens/s and model
   FLOPs utilisation: FLOPs of one forward + backward counted by ``torch.utils.flop_counter``
   on the meta device ÷ (step time × the GPU's dense bf16 peak; ``--peak-tflops`` overrides).
3. **Latency** — the full-depth model in bf16 (fp32 on CPU), batch 1, 10 Euler steps:
   action-only decoding (cached context) and joint decoding (C + A + V every step), run
   interleaved after warm-up; p50/p95 per chunk and joint ÷ action-only against the token-pass
   bound 10·(C + A + V) / (C + 10·A) (4.8 at this geometry).

The codec object a policy needs is a tiny random VAE of Wan2.2's layout: batches carry latents,
so it never runs; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_train import synthetic_batch
from policy.inference import Context, sample_actions, sample_joint
from policy.model import GWPPolicyModel, PolicyConfig, TextConfig
from pretrain.config import ModelConfig, get_model_config
from pretrain.model import param_count
from pretrain.run_config import TrainConfig
from tests.pretrain.wan_tiny import WAN22_VAE  # Wan2.2's VAE layout at base width 8

TEXT_DIM = 64  # width of the synthetic instruction token states
DIMS = 14  # action/state dims of the synthetic embodiment (a dual arm)
STEPS = 10  # Euler steps per chunk


def model_config(reduced: bool) -> ModelConfig:
    cfg = get_model_config("wan22-5b")
    if reduced:
        cfg = replace(
            cfg, name="wan22-5b-reduced", dim=64, heads=2, head_dim=32, ffn_dim=128, layers=2, text_dim=TEXT_DIM,
            mlp_hidden=64, freq_dim=32,
        )  # fmt: skip
    return cfg


def build_policy(mcfg: ModelConfig, device: torch.device) -> GWPPolicyModel:
    cfg = PolicyConfig(
        model=mcfg,
        codec="wan-vae",
        codec_kwargs={"config": WAN22_VAE, "seed": 0},
        text=TextConfig(dim=TEXT_DIM),
    )
    with torch.device(device):
        return GWPPolicyModel(cfg)


def train_flops(mcfg: ModelConfig, batch: int, grid: tuple[int, int]) -> int:
    """Forward + backward FLOPs of one joint-loss step, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_policy(mcfg, torch.device("meta"))
    b = synthetic_batch(mcfg, batch, grid, TEXT_DIM, "meta", dims=DIMS)
    b["embodiment_id"] = torch.zeros(batch, dtype=torch.long)  # range-checked on the host
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.joint_loss(b)
        loss.backward()
    return int(counter.get_total_flops())


def fitting_layers(mcfg: ModelConfig) -> int:
    from benchmarks.bench_train import auto_layers

    return auto_layers(mcfg)


def check_training(
    mcfg: ModelConfig, args: argparse.Namespace, device: torch.device, grid: tuple[int, int]
) -> dict:
    from pretrain import distributed as dd
    from pretrain.engine import build_engine

    cuda = device.type == "cuda"
    cfg = TrainConfig(
        name="gpu-check", zero_stage=2, precision="bf16" if cuda else "fp32", activation_checkpointing=True,
        steps=10**6, batch_size=args.batch, lr=1e-5, warmup_steps=0, ema_decay=0.0, output_dir="/tmp/gpu_check",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_policy(mcfg, device)
    te = build_engine(model, cfg, dd.init_distributed("nccl" if cuda else "gloo"))
    batch = synthetic_batch(mcfg, args.batch, grid, TEXT_DIM, te.device, dims=DIMS)
    engine = te.engine
    engine.train()
    times, losses = [], []
    for i in range(args.warmup + args.train_steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = engine.module.joint_loss(batch, forward=engine)
        engine.backward(loss)
        engine.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    step = statistics.median(times)
    flops = train_flops(mcfg, args.batch, grid)
    tokens = sum(mcfg.token_counts(*grid).values())
    peak = args.peak_tflops or (peak_tflops() if cuda else None)
    out = {
        "layers": mcfg.layers,
        "parameters": param_count(mcfg),
        "zero_stage": 2,
        "activation_checkpointing": True,
        "precision": te.precision,
        "batch_size": args.batch,
        "steps": len(times),
        "losses": losses,
        "step_s": step,
        "tokens_per_s": tokens * args.batch / step,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step / 1e12,
        "peak_tflops": peak,
        "mfu": flops / step / (peak * 1e12) if peak else None,
    }
    if cuda:
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del engine, te, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def peak_tflops() -> float | None:
    from benchmarks.bench_train import PEAK_BF16_TFLOPS

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def check_latency(
    mcfg: ModelConfig, args: argparse.Namespace, device: torch.device, grid: tuple[int, int]
) -> dict:
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    model = build_policy(mcfg, device).to(dtype).eval().transformer
    g = torch.Generator(device=device).manual_seed(0)
    h, w = grid
    ctx = Context(
        obs_latent_BC1hw=torch.randn(1, mcfg.latent_channels, 1, h, w, generator=g, device=device).to(dtype),
        state_B32=torch.randn(1, 32, generator=g, device=device).to(dtype),
        embodiment_id_B=torch.zeros(1, dtype=torch.long, device=device),
        text_BLD=torch.randn(1, 1, mcfg.text_dim, generator=g, device=device).to(dtype),
    )
    runs = {
        "action_only": lambda: sample_actions(model, ctx, num_steps=STEPS, generator=g),
        "joint": lambda: sample_joint(model, ctx, num_steps=STEPS, generator=g),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.warmup + args.repeats):
        for name, fn in runs.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    t = mcfg.token_counts(*grid)
    out: dict[str, Any] = {"layers": mcfg.layers, "dtype": str(dtype).removeprefix("torch."), "batch": 1}
    for name, xs in times.items():
        s = sorted(xs)
        out[name] = {"p50_s": statistics.median(xs), "p95_s": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]}
    out["joint_over_action_only"] = out["joint"]["p50_s"] / out["action_only"]["p50_s"]
    out["token_pass_bound"] = STEPS * sum(t.values()) / (t["context"] + STEPS * t["action"])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.reduced:
        raise SystemExit("gpu_check: the full wan22-5b check needs a GPU; on CPU pass --reduced")
    mcfg = model_config(args.reduced)
    width, height = args.image
    grid = (height // 16, width // 16)  # the Wan2.2 VAE's 16× spatial factor
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": mcfg.name,
        "geometry": mcfg.video_geometry,
        "image": [width, height],
        "tokens": mcfg.token_counts(*grid),
    }
    layers = args.train_layers or (fitting_layers(mcfg) if device.type == "cuda" else mcfg.layers)
    t0 = time.perf_counter()
    report["train"] = check_training(replace(mcfg, layers=min(layers, mcfg.layers)), args, device, grid)
    report["latency"] = check_latency(mcfg, args, device, grid)
    report["wall_s"] = time.perf_counter() - t0
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for the figures")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--reduced", action="store_true", help="small width/depth, same token layout (CPU, tests)")
    p.add_argument("--image", type=lambda s: tuple(int(v) for v in s.split("x")), default=(384, 320))
    p.add_argument("--batch", type=int, default=8, help="training samples per step")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--train-layers", type=int, default=None, help="default: as many as fit (GPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="latency runs of each sampler")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs on shared cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(args)
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
