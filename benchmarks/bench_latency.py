"""Latency of the GWP policy per chunk: action-only (eager and compiled) vs joint, per model kind.

    python -m benchmarks.bench_latency                         # GWP geometry, width 512, dense + expert
    python -m benchmarks.bench_latency --kinds dense           # a checkout without the action expert
    python -m benchmarks.bench_latency --set expert.action_expert_dim=256 --json latency.json
    python -m benchmarks.bench_latency --geometry debug --repeats 3 --no-compile   # a smoke run

Batch 1, 10 Euler steps, fp32 (bf16 on CUDA with ``--bf16``), inputs are latents (the codec is
outside the timed region). Per model kind, three samplers:

* ``action`` — action-only decoding, eager: the context encoded once and its K/V cached, then
  the P action tokens at each step (:func:`policy.inference.sample_actions`);
* ``action_compiled`` — the same with every Euler step one ``torch.compile`` graph
  (:class:`policy.inference.CompiledStep`, the default mode for the device: CUDA graphs on CUDA,
  inductor's default on CPU); compiled before timing, the compile time is reported apart;
* ``joint`` — actions and future video together, C + A + V tokens at each step (eager).

Every (kind, sampler) pair runs once per round, interleaved, after warm-up, so the machine's
load hits all alike; p50 and p95 of the wall time per chunk are reported.

**Geometry** (``--geometry``): ``gwp`` — GWP's, the ``wan22-5b`` preset's layout (384×320 image
through the 16× VAE → 24×20 latent, patch (1, 2, 2) → 120 tokens a frame, observation + 4
future frames as one clip): C = 1 + 120, A = 48, V = 120, at a reduced ``--width`` (heads of
64) and ``--layers`` so that it runs on a CPU; ``per-frame`` — the same with each future frame
its own latent frame (V = 480); ``debug`` — the ``debug`` preset at a 64×64 image (a smoke run).
``--full`` keeps the ``wan22-5b`` preset's own width and depth (3072 × 30 layers, heads of 128:
a GPU's work, ``--device cuda --bf16``); the expert kind at ratio 3 is then GWP-0.5's 1024-wide
expert with FFN 4096 (the ``wan22-5b-mot`` preset's).

**Kinds** (``--kinds``): ``dense`` — one shared backbone for every token (GWP-0); ``expert`` —
an action expert (GWP-0.5's Mixture-of-Transformers): state and action tokens through their own
blocks ``--expert-ratio`` (3) times narrower than the backbone, rounded up to a whole number of
the backbone's heads' width, FFN 4× its width. A kind is a set of ``ModelConfig`` overrides,
``--set KIND.FIELD=VALUE`` changes or adds one (a new KIND name defines a new kind); a field
this checkout's ``ModelConfig`` does not have is refused with the fields it has.

**Bounds**: joint runs C + A + V tokens in each of the S = 10 steps, action-only runs C once
and A in each: the token-pass bound of joint ÷ action-only is S·(C + A + V) ÷ (C + S·A), 4.8 at
GWP's geometry. The expert's action-only step runs the P action tokens through the narrow
blocks only (its attention still reads the cached context).

Output: a markdown table (command, commit, machine) and then the JSON of every figure on
stdout; ``--json PATH`` also writes the JSON there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.provenance import git_commit
from policy.inference import CompiledStep, Context, default_compile_mode, sample_actions, sample_joint
from pretrain.config import ModelConfig, get_model_config
from pretrain.model import build_model, param_count

GEOMETRIES = ("gwp", "per-frame", "debug")
SAMPLERS = ("action", "action_compiled", "joint")
STEPS = 10


@dataclass(frozen=True)
class Setup:
    kind: str
    model: ModelConfig
    latent_hw: tuple[int, int]  # (H, W) of a latent frame, before the (1, 2, 2) patch

    def tokens(self) -> tuple[int, int, int]:
        t = self.model.token_counts(*self.latent_hw)
        return t["context"], t["action"], t["video"]


def base_config(
    geometry: str, width: int, layers: int, full: bool = False
) -> tuple[ModelConfig, tuple[int, int]]:
    """The dense model of ``geometry`` and its latent frame's (H, W); ``full``: wan22-5b as is."""
    if geometry == "debug":
        return get_model_config("debug"), (64 // 4, 64 // 4)  # pixel codec: 4× spatial
    cfg = get_model_config("wan22-5b") if full else dataclasses.replace(
        get_model_config("wan22-5b"), name=f"wan22-5b-layout-{width}x{layers}", dim=width, heads=width // 64,
        head_dim=64, ffn_dim=4 * width, layers=layers, text_dim=512, mlp_hidden=256,
    )  # fmt: skip
    if geometry == "per-frame":
        cfg = dataclasses.replace(cfg, video_geometry="per_frame")
    return cfg, (320 // 16, 384 // 16)


def kind_overrides(base: ModelConfig, ratio: float) -> dict[str, dict[str, object]]:
    """The built-in kinds: ``dense`` and ``expert`` (width / ratio, rounded up to whole heads)."""
    d = base.head_dim
    expert = max(d, -(-round(base.dim / ratio) // d) * d)
    return {"dense": {}, "expert": {"action_expert_dim": expert, "action_expert_ffn_dim": 4 * expert}}


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        kind, dot, field = key.partition(".")
        if not (eq and dot and kind and field):
            raise ValueError(f"--set {item!r}: expected KIND.FIELD=VALUE, e.g. expert.action_expert_dim=192")
        out.setdefault(kind, {})[field] = value
    return out


def _typed(field: dataclasses.Field, text: str, where: str) -> object:
    t = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    try:
        if t == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if t == "int":
            return int(text)
        if t == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not of type {t}") from None
    return text


def kind_config(base: ModelConfig, kind: str, overrides: dict[str, object]) -> ModelConfig:
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    typed = {}
    for name, value in overrides.items():
        if name not in fields:
            raise ValueError(
                f"kind {kind!r}: ModelConfig has no field {name!r} in this checkout (its fields: "
                f"{', '.join(fields)}); run the kinds it supports, e.g. --kinds dense"
            )
        where = f"kind {kind!r}, {name}"
        typed[name] = _typed(fields[name], value, where) if isinstance(value, str) else value
    return dataclasses.replace(base, name=f"{base.name}-{kind}", **typed)


def context(
    cfg: ModelConfig, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> Context:
    g = torch.Generator(device=device).manual_seed(0)
    H, W = latent_hw
    return Context(
        obs_latent_BC1hw=torch.randn(1, cfg.latent_channels, 1, H, W, generator=g, device=device).to(dtype),
        state_B32=torch.randn(1, 32, generator=g, device=device).to(dtype),
        embodiment_id_B=torch.zeros(1, dtype=torch.long, device=device),
        text_BLD=torch.randn(1, 16, cfg.text_dim, generator=g, device=device).to(dtype),
    )


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def measure(
    setups: list[Setup], args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[dict]:
    """Every (kind, sampler) once per round, interleaved; compile first, outside the timing."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    runs: dict[tuple[str, str], Callable[[], object]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for s in setups:
        torch.manual_seed(0)
        model = build_model(s.model, device).to(dtype).eval()
        ctx = context(s.model, s.latent_hw, device, dtype)
        g = torch.Generator(device=device).manual_seed(0)
        C, A, V = s.tokens()
        rows[s.kind] = {
            "kind": s.kind, "model": s.model.to_dict(), "params": param_count(model), "C": C, "A": A, "V": V,
            "token_bound": STEPS * (C + A + V) / (C + STEPS * A),
        }  # fmt: skip
        runs[s.kind, "action"] = lambda m=model, c=ctx, g=g: sample_actions(
            m, c, num_steps=STEPS, generator=g
        )
        runs[s.kind, "joint"] = lambda m=model, c=ctx, g=g: sample_joint(m, c, num_steps=STEPS, generator=g)
        # the context pass alone: what a chunk costs before its first denoising step (the same
        # visual stream in both kinds), so the per-step cost is (action-only − context) ÷ steps
        runs[s.kind, "context"] = lambda m=model, c=ctx: m.encode_context(
            c.obs_latent_BC1hw, state_B32=c.state_B32, embodiment_id_B=c.embodiment_id_B, text_BLD=c.text_BLD
        )
        if args.compile:
            step = CompiledStep(args.compile_mode or default_compile_mode(device))
            run = _compiled_run(model, ctx, g, step)
            t0 = time.perf_counter()
            run()
            sync()
            rows[s.kind]["compile_s"] = time.perf_counter() - t0
            rows[s.kind]["compile_mode"] = step.mode
            runs[s.kind, "action_compiled"] = run
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for i in range(args.warmup + args.repeats):
        for key, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= args.warmup:
                times[key].append(time.perf_counter() - t0)
    for (kind, sampler), xs in times.items():
        rows[kind][sampler] = {
            "p50": percentile(xs, 50),
            "p95": percentile(xs, 95),
            "mean": statistics.fmean(xs),
        }
    for r in rows.values():
        r["joint_over_action"] = r["joint"]["p50"] / r["action"]["p50"]
        for sampler in ("action", "action_compiled"):
            if sampler in r:
                r[f"{sampler}_per_step"] = max(0.0, r[sampler]["p50"] - r["context"]["p50"]) / STEPS
        if "action_compiled" in r:
            r["compiled_speedup"] = r["action"]["p50"] / r["action_compiled"]["p50"]
    if "dense" in rows:
        for r in rows.values():
            r["action_speedup_vs_dense"] = rows["dense"]["action"]["p50"] / r["action"]["p50"]
            if "action_compiled" in r and "action_compiled" in rows["dense"]:
                dense_c = rows["dense"]["action_compiled"]["p50"]
                r["action_compiled_speedup_vs_dense"] = dense_c / r["action_compiled"]["p50"]
            for sampler in ("action", "action_compiled"):
                key, dense_step = f"{sampler}_per_step", rows["dense"].get(f"{sampler}_per_step")
                if key in r and dense_step and r[key] > 0:
                    r[f"{key}_speedup_vs_dense"] = dense_step / r[key]
    return list(rows.values())


def _compiled_run(model: torch.nn.Module, ctx: Context, g: torch.Generator, step: CompiledStep) -> Callable:
    return lambda: sample_actions(model, ctx, num_steps=STEPS, generator=g, step_fn=step)


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model; platform gives only the architecture there
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores, {threads} torch thread(s)), {platform.node()}, torch {torch.__version__}"


def _ms_or_dash(r: dict, key: str) -> str:
    return f"{1e3 * r[key]:.2f}" if key in r else "–"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"`{meta['command']}` (commit `{meta['commit']}`) — {meta['machine']}, batch 1, {STEPS} Euler steps, "
        f"{meta['dtype']}, {meta['repeats']} interleaved rounds after {meta['warmup']} warm-up, load "
        f"{meta['load_start']:.1f} → {meta['load_end']:.1f} (1-min average).",
        "",
        "| kind | params | C / A / V | action-only p50 / p95 (ms) | compiled p50 / p95 (ms) | compiled speed-up | "
        "action-only vs dense (eager / compiled) | joint p50 / p95 (ms) | joint ÷ action-only | token-pass bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(r: dict, k: str) -> str:
        return f"{1e3 * r[k]['p50']:.1f} / {1e3 * r[k]['p95']:.1f}" if k in r else "–"

    for r in rows:
        comp = f"{r['compiled_speedup']:.2f}×" if "compiled_speedup" in r else "–"
        vs = "–"
        if "action_speedup_vs_dense" in r:
            vs = f"{r['action_speedup_vs_dense']:.2f}×"
            if "action_compiled_speedup_vs_dense" in r:
                vs += f" / {r['action_compiled_speedup_vs_dense']:.2f}×"
        lines.append(
            f"| {r['kind']} ({r['model']['name']}) | {r['params'] / 1e6:.1f} M | {r['C']} / {r['A']} / {r['V']} | "
            f"{ms(r, 'action')} | {ms(r, 'action_compiled')} | {comp} | {vs} | {ms(r, 'joint')} | "
            f"{r['joint_over_action']:.2f}× | {r['token_bound']:.2f}× |"
        )
    lines += [
        "",
        "Per denoising step, (action-only − context pass) ÷ steps, p50: the context pass (state, "
        "observation, text through every layer, once per chunk) is the visual stream in both kinds.",
        "",
        "| kind | context pass p50 (ms) | per step eager (ms) | per step compiled (ms) | "
        "per step vs dense (eager / compiled) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        vs = " / ".join(
            f"{r[k]:.2f}×" if k in r else "–"
            for k in ("action_per_step_speedup_vs_dense", "action_compiled_per_step_speedup_vs_dense")
        )
        lines.append(
            f"| {r['kind']} | {1e3 * r['context']['p50']:.1f} | {_ms_or_dash(r, 'action_per_step')} | "
            f"{_ms_or_dash(r, 'action_compiled_per_step')} | {vs} |"
        )
    if any("compile_s" in r for r in rows):
        lines += ["", "Compile time (first chunk, " + ", ".join(
            f"{r['kind']}: {r['compile_s']:.1f} s, mode {r['compile_mode']}" for r in rows if "compile_s" in r
        ) + ")."]  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", choices=GEOMETRIES, default="gwp")
    p.add_argument("--kinds", default="dense,expert", help="comma-separated model kinds (see --set)")
    p.add_argument("--set", action="append", default=[], metavar="KIND.FIELD=VALUE",
                   help="a ModelConfig override of one kind; repeat (a new KIND defines a new kind)")  # fmt: skip
    p.add_argument("--width", type=int, default=512, help="backbone width of the gwp/per-frame geometries")
    p.add_argument("--layers", type=int, default=4, help="layers of the gwp/per-frame geometries")
    p.add_argument("--full", action="store_true", help="the wan22-5b preset's own width and depth (GPU)")
    p.add_argument("--expert-ratio", type=float, default=3.0, help="backbone width ÷ action-expert width")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: no contention on shared cores)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 weights and activations (CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled sampler")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: the device's)")
    p.add_argument("--json", default=None, help="also write the JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    git_commit()  # now, before the run: a commit made meanwhile is not what ran
    try:
        if args.width < 64 or args.width % 64:
            raise ValueError(f"--width must be a positive multiple of 64 (heads of 64), got {args.width}")
        if args.repeats < 1 or args.warmup < 0 or args.layers < 1 or not args.expert_ratio > 0:
            raise ValueError("--repeats and --layers must be ≥ 1, --warmup ≥ 0, --expert-ratio > 0")
        base, latent_hw = base_config(args.geometry, args.width, args.layers, args.full)
        known = kind_overrides(base, args.expert_ratio)
        sets = parse_sets(args.set)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in known and k not in sets]
        if not kinds or unknown:
            raise ValueError(
                f"--kinds: unknown kind(s) {unknown} (built in: {sorted(known)}; --set defines more)"
            )
        setups = [
            Setup(k, kind_config(base, k, {**known.get(k, {}), **sets.get(k, {})}), latent_hw) for k in kinds
        ]
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as err:
        print(f"bench_latency: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    meta = {
        "command": shlex.join(["python", "-m", "benchmarks.bench_latency", *(sys.argv[1:] if argv is None else argv)]),
        "commit": git_commit(), "machine": machine(device, args.threads), "dtype": str(dtype).removeprefix("torch."),
        "repeats": args.repeats, "warmup": args.warmup, "geometry": args.geometry, "load_start": os.getloadavg()[0],
    }  # fmt: skip
    rows = measure(setups, args, device, dtype)
    meta["load_end"] = os.getloadavg()[0]
    doc = {"meta": meta, "rows": rows}
    print(markdown(rows, meta))
    print()
    print(json.dumps(doc, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
