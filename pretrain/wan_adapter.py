"""Load a diffusers ``WanTransformer3DModel`` checkpoint into ``ActionVideoTransformer``.

The transformer mirrors Wan2.x block for block (``pretrain/model.py``), so conversion is a
renaming with shape checks. diffusers names → ours::

    patch_embedding                          → video_in
    condition_embedder.time_embedder.linear_1/2 → time_embed.fc1/fc2
    condition_embedder.time_proj             → time_modulation
    condition_embedder.text_embedder.linear_1/2 → text_in.fc1/fc2
    blocks.i.attn1.to_q/to_k/to_v/to_out.0   → blocks.i.self_attn.q/k/v/out
    blocks.i.attn1.norm_q/norm_k             → blocks.i.self_attn.q_norm/k_norm
    blocks.i.attn2.*                         → blocks.i.cross_attn.*   (same pattern)
    blocks.i.attn1.to_qkv / attn2.to_kv      → split into q, k, v (fused projections)
    blocks.i.norm2                           → blocks.i.cross_norm
    blocks.i.ffn.net.0.proj / ffn.net.2      → blocks.i.ffn.0 / ffn.2
    blocks.i.scale_shift_table               → blocks.i.modulation
    proj_out / scale_shift_table             → video_out.proj / video_out.modulation

Not in Wan, so left at their fresh initialisation: the state/action encoders (``state_in``,
``action_in``) and the action head (``action_out``: modulated norm + decoder), and the action
expert's blocks where the model has one (``action_expert``; ``pretrain/action_expert.py``). Keys of Wan
variants this model does not have (the I2V image embedder, added K/V projections) are reported
as unmapped; with ``strict=True`` they are an error.

Sources: a ``.safetensors`` file, a folder of shards (with or without
``*.safetensors.index.json``), a diffusers pipeline folder (its ``transformer/`` subfolder), a
``.bin``/``.pt`` torch file, or a state dict. A folder's ``config.json`` is checked against the
model's geometry (``model_config_from_wan``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.config import ModelConfig, get_model_config
from pretrain.model import ActionVideoTransformer, build_model

NEW_MODULE_PREFIXES = ("state_in.", "action_in.", "action_out.", "action_expert.")

_TOP = {
    "patch_embedding": "video_in",
    "condition_embedder.time_embedder.linear_1": "time_embed.fc1",
    "condition_embedder.time_embedder.linear_2": "time_embed.fc2",
    "condition_embedder.time_proj": "time_modulation",
    "condition_embedder.text_embedder.linear_1": "text_in.fc1",
    "condition_embedder.text_embedder.linear_2": "text_in.fc2",
    "proj_out": "video_out.proj",
}
_BLOCK = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "out",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
}
_ATTN = {"attn1": "self_attn", "attn2": "cross_attn"}
_BLOCK_OTHER = {"norm2": "cross_norm", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# diffusers itself ignores these on load (absent in some exported checkpoints' models)
_IGNORED = re.compile(r"(^|\.)norm_added_q\.")


@dataclass(frozen=True)
class WanConversion:
    state_dict: dict[str, Tensor]  # our names
    unmapped: list[str]  # diffusers keys with no counterpart here
    missing: list[str]  # our backbone keys the checkpoint did not provide


@dataclass(frozen=True)
class WanLoadReport:
    loaded: int  # tensors copied into the model
    unmapped: list[str]
    fresh: list[str]  # our parameters left at initialisation (not in Wan)


def _rename(key: str) -> list[tuple[str, int | None, int]] | None:
    """Our key(s) for a diffusers key: [(name, chunk index or None, number of chunks)]."""
    if key == "scale_shift_table":
        return [("video_out.modulation", None, 1)]
    stem, _, leaf = key.rpartition(".")
    if stem in _TOP:
        return [(f"{_TOP[stem]}.{leaf}", None, 1)]
    m = _BLOCK_RE.match(key)
    if not m:
        return None
    i, rest = m.group(1), m.group(2)
    if rest == "scale_shift_table":
        return [(f"blocks.{i}.modulation", None, 1)]
    stem, _, leaf = rest.rpartition(".")
    attn, _, sub = stem.partition(".")
    if attn in _ATTN:
        ours = f"blocks.{i}.{_ATTN[attn]}"
        if sub in _BLOCK:
            return [(f"{ours}.{_BLOCK[sub]}.{leaf}", None, 1)]
        if sub == "to_qkv":
            return [(f"{ours}.{n}.{leaf}", j, 3) for j, n in enumerate("qkv")]
        if sub == "to_kv":
            return [(f"{ours}.{n}.{leaf}", j, 2) for j, n in enumerate("kv")]
        return None
    if stem in _BLOCK_OTHER:
        return [(f"blocks.{i}.{_BLOCK_OTHER[stem]}.{leaf}", None, 1)]
    return None


def _expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in build_model(cfg, "meta").state_dict().items()}


def convert_wan_state_dict(diffusers_state_dict: dict[str, Tensor], cfg: ModelConfig) -> WanConversion:
    """Rename a diffusers Wan transformer state dict to ours, checking every shape against ``cfg``."""
    expected = _expected_shapes(cfg)
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in diffusers_state_dict.items():
        targets = _rename(key)
        if targets is None or any(t[0] not in expected for t in targets):
            if not _IGNORED.search(key):
                unmapped.append(key)
            continue
        for name, idx, n in targets:
            t = tensor if idx is None else tensor.chunk(n, dim=0)[idx]
            if t.shape != expected[name]:
                raise ValueError(
                    f"convert_wan_state_dict: {key} {list(tensor.shape)} → {name} has shape {list(t.shape)}, "
                    f"model config {cfg.name!r} expects {list(expected[name])}"
                )
            out[name] = t
    backbone = [k for k in expected if not k.startswith(NEW_MODULE_PREFIXES)]
    missing = [k for k in backbone if k not in out]
    return WanConversion(out, sorted(unmapped), missing)


# ---------------------------------------------------------------- reading checkpoints


def _weights_dir(path: Path) -> Path:
    """The folder that holds the transformer weights (a pipeline keeps them in transformer/)."""
    if (path / "transformer").is_dir() and not any(path.glob("*.safetensors")):
        return path / "transformer"
    return path


def read_wan_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a Wan transformer checkpoint file or folder (see the module docstring)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Wan checkpoint {p}: no such file or folder")
    if p.is_file():
        if p.suffix == ".safetensors":
            return load_file(str(p))
        if p.suffix in (".bin", ".pt", ".pth"):
            sd = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise ValueError(f"Wan checkpoint {p}: expected a state dict, got {type(sd).__name__}")
            return sd
        raise ValueError(
            f"Wan checkpoint {p}: unsupported file type {p.suffix!r} (want .safetensors/.bin/.pt)"
        )
    d = _weights_dir(p)
    indexes = sorted(d.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        shards = sorted({d / f for f in weight_map.values()})
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"Wan checkpoint {indexes[0]}: shards listed but absent: {missing}")
    else:
        shards = sorted(d.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"Wan checkpoint {d}: no .safetensors files in this folder")
    sd: dict[str, Tensor] = {}
    for shard in shards:
        sd.update(load_file(str(shard)))
    return sd


def read_wan_config(path: str | Path) -> dict[str, Any] | None:
    """The diffusers ``config.json`` beside the weights, if there is one."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    f = _weights_dir(p) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def model_config_from_wan(diffusers_config: dict[str, Any], base: ModelConfig | None = None) -> ModelConfig:
    """Our config with the backbone geometry of a diffusers Wan config; the rest from ``base``."""
    base = base or get_model_config("wan22-5b")
    c = diffusers_config
    if c.get("image_dim") is not None or c.get("added_kv_proj_dim") is not None:
        raise ValueError(
            "model_config_from_wan: image-conditioned Wan (I2V, image_dim/added_kv_proj_dim) is not supported"
        )
    in_ch, out_ch = c.get("in_channels", 16), c.get("out_channels") or c.get("in_channels", 16)
    if in_ch != out_ch:
        raise ValueError(
            f"model_config_from_wan: in_channels {in_ch} ≠ out_channels {out_ch}; need one latent space"
        )
    qk = c.get("qk_norm", "rms_norm_across_heads")
    if qk not in (None, "rms_norm_across_heads"):
        raise ValueError(
            f"model_config_from_wan: qk_norm {qk!r} is not supported (want 'rms_norm_across_heads')"
        )
    heads, head_dim = int(c.get("num_attention_heads", 40)), int(c.get("attention_head_dim", 128))
    return replace(
        base,
        name=f"{base.name}-from-wan",
        dim=heads * head_dim,
        heads=heads,
        head_dim=head_dim,
        layers=int(c.get("num_layers", 40)),
        ffn_dim=int(c.get("ffn_dim", 13824)),
        latent_channels=int(in_ch),
        patch=tuple(int(x) for x in c.get("patch_size", (1, 2, 2))),
        text_dim=int(c.get("text_dim", 4096)),
        freq_dim=int(c.get("freq_dim", 256)),
        eps=float(c.get("eps", 1e-6)),
        qk_norm=qk is not None,
        cross_attn_norm=bool(c.get("cross_attn_norm", True)),
    )


# ModelConfig fields that fix the backbone's weights: two configs agreeing on them load each other
BACKBONE_FIELDS = (
    "dim",
    "layers",
    "heads",
    "head_dim",
    "ffn_dim",
    "latent_channels",
    "patch",
    "text_dim",
    "freq_dim",
    "eps",
    "qk_norm",
    "cross_attn_norm",
    "action_expert_dim",  # a Wan config takes these from the preset, so only our checkpoints differ
    "action_expert_ffn_dim",
)


def backbone_mismatch(theirs: ModelConfig, ours: ModelConfig) -> list[str]:
    """``"field: checkpoint X vs model Y"`` for each backbone field the two configs disagree on."""
    return [
        f"{f}: checkpoint {getattr(theirs, f)} vs model {getattr(ours, f)}"
        for f in BACKBONE_FIELDS
        if getattr(theirs, f) != getattr(ours, f)
    ]


def load_wan_backbone(
    model: ActionVideoTransformer, source: str | Path | dict[str, Tensor], strict: bool = True
) -> WanLoadReport:
    """Copy Wan backbone weights into ``model`` (in place, cast to the model's dtype).

    ``strict``: every backbone parameter must come from the checkpoint and every checkpoint
    tensor must have a home; otherwise only the mapped tensors are loaded and the rest reported.
    """
    cfg = model.cfg
    where = "state dict" if isinstance(source, dict) else str(source)
    if not isinstance(source, dict):
        wan_cfg = read_wan_config(source)
        if wan_cfg is not None:
            diff = backbone_mismatch(model_config_from_wan(wan_cfg, cfg), cfg)
            if diff:
                raise ValueError(
                    f"load_wan_backbone: {where} does not match model config {cfg.name!r}: " + "; ".join(diff)
                )
        source = read_wan_state_dict(source)
    conv = convert_wan_state_dict(source, cfg)
    if strict and (conv.unmapped or conv.missing):
        raise ValueError(
            f"load_wan_backbone: {where}: unmapped checkpoint keys {conv.unmapped[:10]}"
            f"{' …' if len(conv.unmapped) > 10 else ''}; backbone keys missing from it {conv.missing[:10]}"
            f"{' …' if len(conv.missing) > 10 else ''} (pass strict=False to load what maps)"
        )
    result = model.load_state_dict(conv.state_dict, strict=False)
    if result.unexpected_keys:  # cannot happen after the shape check; guard the invariant
        raise RuntimeError(f"load_wan_backbone: unexpected keys {result.unexpected_keys}")
    fresh = set(result.missing_keys)
    if cfg.has_action_expert and cfg.action_expert_init == "sliced":
        from pretrain.action_expert import slice_backbone_into_expert

        fresh -= set(slice_backbone_into_expert(model))
    return WanLoadReport(loaded=len(conv.state_dict), unmapped=conv.unmapped, fresh=sorted(fresh))
