"""``gwp model-info``: what a model preset costs at a video geometry, without building its weights.

    gwp model-info --preset wan22-5b --json
    gwp model-info --preset wan22-5b --image 384x320 --gpus 8 --batch 32
    gwp model-info --preset debug --codec pixel --image 64x64

Everything is computed from the config alone (the model is instantiated on the meta device):

* **parameters per part** — counted from the module tree (video/text/time embedders, the
  embodiment MLPs, the blocks split into self-attention, cross-attention, FFN and modulation,
  the two heads; an action expert's parts under ``action_expert.``);
* **tokens per group** for the geometry (``ModelConfig.token_counts``): context = state +
  observation tokens, action = P, video = future latent frames × tokens per frame. The latent
  grid is the image over the codec's spatial factor (pixel: the default 4×4 patches; wan-vae:
  Wan2.2's VAE, 16× spatial and 4× temporal, its published architecture — no weights are read);
* **attention FLOPs** — the score and value matmuls of the block-causal self-attention (each
  group's queries against the keys it sees, 4·n_q·n_k·D per layer) and of cross-attention to
  ``--text-tokens`` text tokens, forward per sample; a training step is 3× forward (backward
  2×); the dense part is 2·params·tokens forward, also ×3 (with an action expert each token
  counts only its own stream's parameters);
* **the action-only step** — what one denoising step of action-only decoding costs per sample
  once the context (state, observation, text) is cached (``encode_context``): the P action
  tokens through the action stream's blocks — the backbone's (``dim`` wide) or, with an action
  expert, the expert's (``action_expert_dim`` wide, q/k/v projected to the backbone's heads) —
  their attention to the C + P keys and to the text, and the action encoder and head. The
  parameters a step runs through are listed beside the model's total; the FLOPs are the
  linear layers (2 per weight per token) and the attention matmuls (4·n_q·n_k·heads·Dh);
  norms, modulation and the per-chunk time tables are left out;
* **training memory per GPU** for ZeRO stage 1/2/3 with and without optimizer offload and
  activation checkpointing, at ``--gpus`` data-parallel GPUs and ``--batch`` samples per GPU.
  Model states follow the ZeRO paper's mixed-precision accounting (bf16 weights 2Ψ and
  gradients 2Ψ, fp32 master weights and Adam moments 12Ψ): stage 1 shards the 12Ψ, stage 2
  also the gradients, stage 3 everything; offload moves the 12Ψ to host memory. Activations
  are an estimate of what the block stores per token per layer in bf16 (its LayerNorm inputs,
  q/k/v, attention outputs, FFN hidden twice, the residual stream); with checkpointing each
  layer keeps its input plus the K/V that ``_run_blocks`` returns, and one layer is
  recomputed at a time. These are estimates for planning, not measurements: allocator slack,
  communication buffers and fragmentation come on top.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

from pipelines.config_flags import name_flag
from pipelines.usage import ArgumentParser, UsageError, command
from pretrain.config import MODEL_PRESETS, VIDEO_GEOMETRIES, ModelConfig, get_model_config

# (spatial, temporal) factor of each codec; wan-vae = the Wan2.2 VAE (patch 2 + 3 downsamplings, 2 temporal)
CODEC_FACTORS = {"pixel": (4, 1), "wan-vae": (16, 4)}
GIB = 1024**3


def parse_image(text: str) -> tuple[int, int]:
    """``"384x320"`` → (width 384, height 320)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--image {text}: expected WIDTHxHEIGHT, e.g. 384x320") from None
    if w < 1 or h < 1:
        raise UsageError(f"--image {text}: width and height must be positive")
    return w, h


def latent_grid(cfg: ModelConfig, codec: str, width: int, height: int) -> tuple[int, int]:
    """(h, w) of the latents; a clear error when the image, codec and geometry do not fit."""
    spatial, temporal = CODEC_FACTORS[codec]
    if cfg.video_geometry == "clip" and temporal != cfg.vae_temporal:
        raise UsageError(
            f"--codec {codec} encodes frame by frame; preset {cfg.name!r} uses the clip geometry "
            f"({cfg.vae_temporal} frames per latent frame): use --codec wan-vae or --geometry per_frame"
        )
    step = spatial * max(cfg.patch[1], cfg.patch[2])
    if width % step or height % step:
        raise UsageError(
            f"--image {width}x{height}: width and height must be multiples of {step} "
            f"(codec {codec!r} factor {spatial} × patch {cfg.patch[1:]})"
        )
    return height // spatial, width // spatial


def parameters_per_part(cfg: ModelConfig) -> dict[str, int]:
    from pretrain.model import build_model

    model = build_model(cfg, "meta")
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        prefix = ""
        if top == "action_expert":  # the expert's own parts, named as the backbone's
            prefix, name = "action_expert.", name.split(".", 1)[1]
            top = name.split(".")[0]
        if top == "blocks":
            sub = name.split(".")[2]
            key = {"self_attn": "blocks.self_attention", "cross_attn": "blocks.cross_attention"}.get(sub)
            key = key or ("blocks.ffn" if sub == "ffn" else "blocks.norms_and_modulation")
        elif top in ("time_embed", "time_modulation"):
            key = "time_embedding"
        else:
            key = top
        parts[prefix + key] = parts.get(prefix + key, 0) + p.numel()
    parts["total"] = sum(parts.values())
    return parts


def attention_flops(cfg: ModelConfig, tokens: dict[str, int], text_tokens: int) -> int:
    """Forward attention FLOPs of one sample: block-causal self-attention + cross-attention."""
    c, a, v = tokens["context"], tokens["action"], tokens["video"]
    seen = [(c, c), (a, c + a), (v, c + a + v)]  # (queries, keys) of each group
    self_attn = sum(4 * nq * nk * cfg.dim for nq, nk in seen)
    cross = 4 * (c + a + v) * text_tokens * cfg.dim
    return cfg.layers * (self_attn + cross)


def action_step(cfg: ModelConfig, context_tokens: int, text_tokens: int) -> dict[str, int]:
    """One action-only denoising step per sample (see the module docstring): parameters, FLOPs."""
    P, D, Hm, inner = cfg.chunk, cfg.dim, cfg.mlp_hidden, cfg.mlp_inner_layers
    W = cfg.action_expert_dim or D  # width of the stream the action tokens run through
    F = cfg.action_expert_ffn_dim or cfg.ffn_dim
    # per layer: q, k, v, out of self-attention; q and out of cross-attention (text K/V cached); FFN
    block = 6 * W * D + 2 * W * F
    io = 2 * (cfg.action_dim * Hm + inner * Hm * Hm + Hm * W)  # action encoder and head, one embodiment
    params = cfg.layers * block + io
    attention = cfg.layers * 4 * P * (context_tokens + P + text_tokens) * D
    return {
        "action_tokens": P,
        "stream_width": W,
        "parameters_run": params,
        "linear_flops": 2 * P * params,
        "attention_flops": attention,
        "flops": 2 * P * params + attention,
    }


def activation_bytes_per_token_layer(cfg: ModelConfig, checkpointing: bool) -> int:
    """bf16 bytes one token keeps per layer for the backward pass (see the module docstring)."""
    D, F = cfg.dim, cfg.ffn_dim
    if checkpointing:
        return 2 * (D + 2 * D)  # the block input + the K/V returned by each layer
    return 2 * (11 * D + 2 * F)


def memory_per_gpu(
    cfg: ModelConfig, params: int, tokens: int, gpus: int, batch: int
) -> dict[str, dict[str, float]]:
    """GiB per GPU (and host GiB per GPU for offload) for ZeRO-1/2/3 × offload × checkpointing."""
    out: dict[str, dict[str, float]] = {}
    weights, grads, optim = 2 * params, 2 * params, 12 * params
    for stage in (1, 2, 3):
        w = weights / gpus if stage == 3 else weights
        g = grads / gpus if stage >= 2 else grads
        o = optim / gpus
        for offload in (False, True):
            for ckpt in (False, True):
                per_layer = activation_bytes_per_token_layer(cfg, ckpt)
                acts = batch * tokens * per_layer * cfg.layers
                if ckpt:  # one layer's full activations while it is recomputed
                    acts += batch * tokens * activation_bytes_per_token_layer(cfg, False)
                gpu = w + g + (0 if offload else o) + acts
                key = ("offload" if offload else "no_offload") + ("+checkpointing" if ckpt else "")
                out.setdefault(f"zero{stage}", {})[key] = round(gpu / GIB, 2)
                if offload:
                    out[f"zero{stage}"][key + ":host"] = round(o / GIB, 2)
    return out


def model_info(
    cfg: ModelConfig, codec: str, width: int, height: int, gpus: int, batch: int, text_tokens: int
) -> dict[str, Any]:
    h, w = latent_grid(cfg, codec, width, height)
    tokens = cfg.token_counts(h, w)
    n = sum(tokens.values())
    params = parameters_per_part(cfg)
    attn = attention_flops(cfg, tokens, text_tokens)
    dense = 2 * params["total"] * n
    if cfg.has_action_expert:  # each token runs through its own stream's weights only
        action = sum(v for k, v in params.items() if k.startswith(("action_expert.", "state_in", "action_")))
        n_action = tokens["action"] + 1  # the actions and the state token
        dense = 2 * (params["total"] - action) * (n - n_action) + 2 * action * n_action
    return {
        "preset": cfg.name,
        "codec": codec,
        "geometry": cfg.video_geometry,
        "image": [width, height],
        "latent_grid": [h, w],
        "future_frames": cfg.num_future,
        "future_latent_frames": cfg.future_latent_frames,
        "tokens": tokens,
        "tokens_total": n,
        "parameters": params,
        "flops": {
            "attention_forward_per_sample": attn,
            "attention_train_step_per_gpu": 3 * attn * batch,
            "dense_forward_per_sample": dense,
            "train_step_per_gpu": 3 * (attn + dense) * batch,
        },
        "action_only_step": action_step(cfg, tokens["context"], text_tokens),
        "gpus": gpus,
        "batch_per_gpu": batch,
        "memory_gib_per_gpu": memory_per_gpu(cfg, params["total"], n, gpus, batch),
    }


def render(info: dict[str, Any]) -> str:
    t, f, s = info["tokens"], info["flops"], info["action_only_step"]
    lines = [
        f"{info['preset']}: codec {info['codec']}, {info['geometry']} geometry, image "
        f"{info['image'][0]}x{info['image'][1]} → latent grid {info['latent_grid'][1]}x{info['latent_grid'][0]}, "
        f"{info['future_frames']} future frames → {info['future_latent_frames']} latent frame(s)",
        f"tokens: C {t['context']} + A {t['action']} + V {t['video']} = {info['tokens_total']}",
        "parameters:",
        *(f"  {k:42s} {v / 1e6:10.2f} M" for k, v in info["parameters"].items()),
        f"attention FLOPs: {f['attention_forward_per_sample'] / 1e9:.2f} G forward per sample, "
        f"{f['attention_train_step_per_gpu'] / 1e12:.2f} T per training step per GPU",
        f"training FLOPs per step per GPU (dense + attention): {f['train_step_per_gpu'] / 1e12:.2f} T",
        f"action-only step (P {s['action_tokens']} tokens through a {s['stream_width']}-wide stream, context "
        f"cached): {s['parameters_run'] / 1e6:.2f} M parameters run, {s['flops'] / 1e9:.3f} G FLOPs per "
        f"sample ({s['attention_flops'] / 1e9:.3f} G attention)",
        f"training memory per GPU (GiB; {info['gpus']} GPUs, batch {info['batch_per_gpu']} per GPU):",
    ]
    for stage, row in info["memory_gib_per_gpu"].items():
        lines.append(f"  {stage}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="gwp model-info", description=__doc__.splitlines()[0])
    name_flag(p, "--preset", MODEL_PRESETS, default="wan22-5b", help="model preset")
    p.add_argument("--codec", choices=sorted(CODEC_FACTORS), default=None, help="default: the geometry's")
    p.add_argument("--geometry", choices=VIDEO_GEOMETRIES, default=None, help="default: the preset's")
    p.add_argument("--image", default="384x320", help="composed image WIDTHxHEIGHT (default GWP's 384x320)")
    p.add_argument("--future", type=int, default=None, help="future frames K (default: the preset's)")
    p.add_argument("--gpus", type=int, default=8, help="data-parallel GPUs")
    p.add_argument("--batch", type=int, default=32, help="samples per GPU")
    p.add_argument("--text-tokens", type=int, default=64, help="text tokens seen by cross-attention")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


@command("gwp model-info")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, v in (("--gpus", args.gpus), ("--batch", args.batch), ("--text-tokens", args.text_tokens)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be ≥ 1")
    cfg = get_model_config(args.preset)
    over = {"video_geometry": args.geometry, "num_future": args.future}
    try:
        cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from err
    codec = args.codec or ("wan-vae" if cfg.video_geometry == "clip" else "pixel")
    info = model_info(cfg, codec, *parse_image(args.image), args.gpus, args.batch, args.text_tokens)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
