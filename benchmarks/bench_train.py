"""Training throughput: DeepSpeed against a plain PyTorch loop (CPU), step time and MFU (GPU).

    python -m benchmarks.bench_train                                   # CPU, debug preset
    python -m benchmarks.bench_train --device cuda --preset wan22-5b --layers 8
    python -m benchmarks.bench_train --device cuda --preset wan22-5b --layers auto
    python -m benchmarks.bench_train --preset wan22-5b --layers 30 --dry-run   # any machine: meta device

What is measured (one process, synthetic latent batches of the curated-sample geometry,
the pretraining objective of ``pretrain/objective.py``):

* **CPU mode** — the same model (same initial weights), batch, optimizer (torch AdamW,
  ``foreach=False``, as the engine builds it), warm-up + cosine schedule and gradient clipping,
  trained twice in this run: a plain loop (``loss.backward(); clip_grad_norm_; opt.step()``)
  and the DeepSpeed engine at ZeRO-2 (``pretrain.engine.build_engine``, fp32, gloo world of
  one, EMA off on both sides). Rounds alternate plain/DeepSpeed so that machine load hits both
  alike; the report gives training tokens/s of each (median round) and the ratio, which is
  DeepSpeed's overhead. A token is one sequence position of the transformer: 1 state +
  h·w observation + P actions + K′·h·w future tokens per sample (K′ future latent frames).
* **GPU mode** — the DeepSpeed engine (ZeRO-2, bf16, activation checkpointing on) at the model
  preset's width with ``--layers`` layers (``auto``: as many as the free memory holds, from
  ~20 bytes per parameter — bf16 weights and gradients, fp32 master copy, gradient buffer and
  Adam moments — plus an activation margin). Reports step time, tokens/s and model FLOPs
  utilisation = model FLOPs per step / (step time × peak bf16 FLOP/s). Model FLOPs are counted
  exactly by ``torch.utils.flop_counter`` on the meta device for one forward + backward at the
  batch's shapes (matmuls and attention as executed; the recomputation of activation
  checkpointing is not counted, as MFU conventionally excludes it). ``--peak-tflops``
  overrides the peak (dense bf16: H100/H200 SXM 989, A100 312).
* ``--dry-run`` builds the model on the meta device and prints parameters, tokens and FLOPs
  per step: no memory, no CUDA — checks a geometry anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.codec import PixelPatchCodec
from pretrain.config import ModelConfig, get_model_config, list_model_configs
from pretrain.model import build_model, param_count
from pretrain.objective import ObjectiveConfig, PretrainObjective
from pretrain.run_config import TrainConfig

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
BYTES_PER_PARAM = (
    20  # bf16 weight + bf16 grad + fp32 master + fp32 grad buffer + Adam m, v (2 + 2 + 4 + 4 + 8)
)


# ---- inputs ----------------------------------------------------------------------------------------

TEXT_TOKENS = 64  # instruction tokens per sample: GWP's prompt length (umT5 states)


def synthetic_batch(
    mcfg: ModelConfig, batch: int, grid: tuple[int, int], text: int, device: Any, dims: int = 7
) -> dict:
    """Latent batch [B, C, 1|K, h, w] + normalised actions/state of one ``dims``-dim embodiment +
    umT5-like instruction token states [B, TEXT_TOKENS, text] (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    C, K, P, (h, w) = mcfg.latent_channels, mcfg.future_latent_frames, mcfg.chunk, grid
    mask = torch.zeros(batch, 32, dtype=torch.bool)
    mask[:, :dims] = True
    out = {
        "obs_latents": torch.randn(batch, C, 1, h, w, generator=g),
        "future_latents": torch.randn(batch, C, K, h, w, generator=g),
        "action": torch.randn(batch, P, 32, generator=g) * mask[:, None],
        "action_mask": mask,
        "state": torch.randn(batch, 32, generator=g) * mask,
        "state_mask": mask,
        "embodiment_id": torch.zeros(batch, dtype=torch.long),
        "text_states": torch.randn(batch, TEXT_TOKENS, text, generator=g),
        "text_mask": torch.ones(batch, TEXT_TOKENS, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in out.items()}


def tokens_per_sample(mcfg: ModelConfig, grid: tuple[int, int]) -> int:
    return sum(mcfg.token_counts(*grid).values())  # C + A + V of the preset's video geometry


def model_flops_per_step(mcfg: ModelConfig, batch: int, grid: tuple[int, int], text: int) -> int:
    """Forward + backward FLOPs of one training step, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(mcfg, "meta")
    objective = PretrainObjective(ObjectiveConfig(action_dropout=0.0), PixelPatchCodec(4), mcfg.text_dim)
    b = synthetic_batch(mcfg, batch, grid, text, "meta")
    b["embodiment_id"] = torch.zeros(batch, dtype=torch.long)  # range-checked by the model: a host value
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective.loss(model, b)
        loss.backward()
    return int(counter.get_total_flops())


# ---- CPU: plain loop against DeepSpeed ----------------------------------------------------------


class PlainLoop:
    """The plain PyTorch side: the engine's optimizer and schedule, kept across rounds."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        from pretrain.engine import build_optimizer, lr_multiplier

        self.model, self.cfg = model, cfg
        self.opt = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_multiplier(cfg, s))

    def run(self, objective: PretrainObjective, batch: dict, steps: int) -> tuple[list[float], list[float]]:
        times, losses = [], []
        self.model.train()
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, _ = objective.loss(self.model, batch)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        return times, losses


def deepspeed_loop(te: Any, objective: PretrainObjective, batch: dict, steps: int):
    engine = te.engine
    times, losses = [], []
    engine.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        loss, _ = objective.loss(engine, batch)
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return times, losses


def bench_cpu(args: argparse.Namespace, mcfg: ModelConfig) -> dict[str, Any]:
    from pretrain import distributed as dd
    from pretrain.engine import build_engine

    torch.set_num_threads(args.threads)
    grid = tuple(args.grid)
    cfg = TrainConfig(
        name="bench", zero_stage=args.zero_stage, precision="fp32", steps=10**6, batch_size=args.batch_size,
        lr=1e-4, warmup_steps=0, ema_decay=0.0, output_dir="/tmp/bench_train",
    )  # fmt: skip
    objective = PretrainObjective(ObjectiveConfig(action_dropout=0.0), PixelPatchCodec(4), mcfg.text_dim)
    batch = synthetic_batch(mcfg, args.batch_size, grid, args.text_dim, "cpu")
    torch.manual_seed(0)
    plain_model = build_model(mcfg)
    ds_model = build_model(mcfg)
    ds_model.load_state_dict(plain_model.state_dict())
    te = build_engine(ds_model, cfg, dd.init_distributed("gloo"))
    plain = PlainLoop(plain_model, cfg)
    # warm-up (allocator, first-call overheads) on both, then alternating measured rounds
    # Both sides draw σ and ε from the global RNG: reseed per round so they see the same noise and,
    # from the same weights through the same optimizer, must produce the same losses (checked).
    torch.manual_seed(1)
    plain_losses = plain.run(objective, batch, args.warmup)[1]
    torch.manual_seed(1)
    ds_losses = deepspeed_loop(te, objective, batch, args.warmup)[1]
    plain_rounds, ds_rounds = [], []
    for r in range(args.rounds):
        torch.manual_seed(100 + r)
        t, losses = plain.run(objective, batch, args.steps)
        plain_rounds.append(sum(t))
        plain_losses += losses
        torch.manual_seed(100 + r)
        t, losses = deepspeed_loop(te, objective, batch, args.steps)
        ds_rounds.append(sum(t))
        ds_losses += losses
    tokens = tokens_per_sample(mcfg, grid) * args.batch_size * args.steps
    plain_tps = tokens / statistics.median(plain_rounds)
    ds_tps = tokens / statistics.median(ds_rounds)
    return {
        "mode": "cpu",
        "preset": mcfg.name,
        "layers": mcfg.layers,
        "params": param_count(mcfg),
        "batch_size": args.batch_size,
        "tokens_per_sample": tokens_per_sample(mcfg, grid),
        "threads": args.threads,
        "zero_stage": args.zero_stage,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "plain_tokens_per_s": plain_tps,
        "deepspeed_tokens_per_s": ds_tps,
        "deepspeed_overhead": plain_tps / ds_tps,  # > 1: DeepSpeed is slower by this factor
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(plain_losses, ds_losses, strict=True)),
        "plain_step_ms": 1e3 * statistics.median(plain_rounds) / args.steps,
        "deepspeed_step_ms": 1e3 * statistics.median(ds_rounds) / args.steps,
    }


# ---- GPU: step time and MFU ---------------------------------------------------------------------


def peak_tflops(override: float | None) -> float:
    if override:
        return override
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"bench_train: no known bf16 peak for {name!r}; pass --peak-tflops")


def auto_layers(mcfg: ModelConfig, margin: float = 0.25) -> int:
    """Layers whose training state fits the free GPU memory, keeping ``margin`` for activations."""
    one = param_count(replace(mcfg, layers=1))
    two = param_count(replace(mcfg, layers=2))
    per_layer, rest = two - one, 2 * one - two
    free, _ = torch.cuda.mem_get_info()
    budget = free * (1 - margin) - rest * BYTES_PER_PARAM
    layers = int(budget // (per_layer * BYTES_PER_PARAM))
    if layers < 1:
        raise SystemExit(
            f"bench_train: not even one layer of {mcfg.name!r} fits in {free / 2**30:.1f} GiB free"
        )
    return min(layers, mcfg.layers)


def bench_gpu(args: argparse.Namespace, mcfg: ModelConfig) -> dict[str, Any]:
    from pretrain import distributed as dd
    from pretrain.engine import build_engine

    grid = tuple(args.grid)
    flops = model_flops_per_step(mcfg, args.batch_size, grid, args.text_dim)
    cfg = TrainConfig(
        name="bench", zero_stage=args.zero_stage, precision="bf16", activation_checkpointing=True,
        steps=10**6, batch_size=args.batch_size, warmup_steps=0, ema_decay=0.0, output_dir="/tmp/bench_train",
    )  # fmt: skip
    objective = PretrainObjective(ObjectiveConfig(action_dropout=0.0), PixelPatchCodec(4), mcfg.text_dim)
    with torch.device("cuda"):
        model = build_model(mcfg)
    te = build_engine(model, cfg, dd.init_distributed("nccl"))
    batch = synthetic_batch(mcfg, args.batch_size, grid, args.text_dim, te.device)
    deepspeed_loop(te, objective, batch, args.warmup)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        deepspeed_loop(te, objective, batch, 1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = peak_tflops(args.peak_tflops)
    return {
        "mode": "gpu",
        "device": torch.cuda.get_device_name(),
        "preset": mcfg.name,
        "layers": mcfg.layers,
        "params": param_count(mcfg),
        "batch_size": args.batch_size,
        "tokens_per_sample": tokens_per_sample(mcfg, grid),
        "step_ms": 1e3 * step,
        "tokens_per_s": tokens_per_sample(mcfg, grid) * args.batch_size / step,
        "model_tflops_per_step": flops / 1e12,
        "peak_tflops": peak,
        "mfu": flops / step / (peak * 1e12),
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


# ---- CLI --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default=None, help=f"model preset ({', '.join(list_model_configs())})")
    p.add_argument("--layers", default=None, help="override the preset's layer count; 'auto' on GPU")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 (CPU), 4 (GPU)")
    p.add_argument("--grid", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="latent grid; default 16 16 (64² frames, 4× pixel patches) on CPU, "
                   "20 24 (320×384 frames, Wan VAE 16×) on GPU")  # fmt: skip
    p.add_argument("--chunk", type=int, default=None, help="action tokens P (default: 8 CPU, 48 GPU)")
    p.add_argument("--num-future", type=int, default=None, help="future frames K (default: 2 CPU, 4 GPU)")
    p.add_argument("--text-dim", type=int, default=64, help="stored text-embedding width E")
    p.add_argument("--steps", type=int, default=10, help="measured steps (per round on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="CPU: alternating plain/DeepSpeed rounds")
    p.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--dry-run", action="store_true", help="meta device only: parameters, tokens, FLOPs")
    p.add_argument("--json", default=None, help="also write the result here")
    return p


def model_config(args: argparse.Namespace) -> ModelConfig:
    gpu = args.device == "cuda"
    preset = args.preset or ("wan22-5b" if gpu else "debug")
    mcfg = replace(
        get_model_config(preset),
        chunk=args.chunk or (48 if gpu else 8),
        num_future=args.num_future or (4 if gpu or preset == "wan22-5b" else 2),
    )
    if args.layers not in (None, "auto"):
        mcfg = replace(mcfg, layers=int(args.layers))
    return mcfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # DeepSpeed compiles its C++ ops on first use: keep them in the project, once
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions")
    )
    gpu = args.device == "cuda"
    args.grid = args.grid or ([20, 24] if gpu else [16, 16])
    args.batch_size = args.batch_size or (4 if gpu else 8)
    mcfg = model_config(args)
    if args.dry_run:
        if args.layers == "auto":
            raise SystemExit("bench_train: --layers auto needs a GPU to read its free memory; give a number")
        grid = tuple(args.grid)
        flops = model_flops_per_step(mcfg, args.batch_size, grid, args.text_dim)
        result = {
            "mode": "dry-run",
            "preset": mcfg.name,
            "layers": mcfg.layers,
            "params": param_count(mcfg),
            "tokens_per_sample": tokens_per_sample(mcfg, grid),
            "batch_size": args.batch_size,
            "model_tflops_per_step": flops / 1e12,
            "training_state_gib_at_20B_per_param": param_count(mcfg) * BYTES_PER_PARAM / 2**30,
        }
    elif gpu:
        if not torch.cuda.is_available():
            raise SystemExit(
                "bench_train: --device cuda needs a CUDA GPU, and torch.cuda.is_available() is False here; "
                "use --device cpu, or --dry-run to check the geometry on the meta device"
            )
        if args.layers == "auto":
            mcfg = replace(mcfg, layers=auto_layers(mcfg))
        result = bench_gpu(args, mcfg)
    else:
        if args.layers == "auto":
            raise SystemExit("bench_train: --layers auto is for --device cuda")
        result = bench_cpu(args, mcfg)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
