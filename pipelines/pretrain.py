"""Pretrain the action-centred video transformer: action-conditioned future-video generation (ARCHITECTURE.md, "The model").

Launch (any of the three; the DeepSpeed launcher passes ``--local_rank``, the environment wins)::

    python -m pipelines.pretrain --preset debug --data shards/ --out runs/pretrain-debug
    deepspeed --num_gpus N --module pipelines.pretrain --preset small --data owner/dataset --out runs/small
    torchrun --nproc_per_node N -m pipelines.pretrain --preset wan22-5b --init <diffusers Wan> \\
        --codec wan-vae --vae <Wan VAE folder> --data … --out …

(``scripts/launch_pretrain.sh`` keeps the recipes.) Top to bottom:

1. open the dataset (``pretrain.data.ShardSet``: a local folder or a Hub dataset repo at a
   revision) and read its geometry from the first row: action chunk P, future frames K,
   frame size (or the stored latent shape);
2. build the transformer from the ``--preset`` model config with P and K of the data and the
   codec's latent channels (48 for the Wan2.2 VAE and the default 4×4 pixel patches; 12 for
   ``--codec-patch 2``, which keeps a token's 4×4×3 pixels within the debug model's width) and
   any ``--model-override FIELD=VALUE`` (e.g. ``head_dim=32``); with ``--init`` (a local folder
   or Hub repo id, ``pretrain.init.resolve_init``) copy in a diffusers ``WanTransformer3DModel``
   — a Wan2.2 transformer or pipeline folder (``pretrain.wan_adapter.load_wan_backbone``, which
   rejects a geometry that differs; the state/action MLPs stay fresh; the codec must be the Wan
   VAE) — or our own checkpoint (every tensor, same geometry); ``--init-wan`` is the older name;
3. build the codec (``pixel`` patches or the Wan VAE) — when the dataset stores latents
   (``gwp curate --latents``) they must be this codec's with the preset's geometry, and the codec
   then never runs (``pretrain.stored_latents``) — and the objective
   (``pretrain.objective.PretrainObjective``: clean actions condition the future video where
   the sample has them, dropped where it has none or with probability ``--action-dropout``);
4. train with ``pretrain.trainer.Trainer`` (train preset = ``--train-preset``, by default the
   model preset's name, with the command-line overrides); ``<out>/run_config.json`` records the
   resolved configuration; a rerun resumes from the newest complete checkpoint in ``--out``
   (``--stop-at N`` ends after step N with a checkpoint, as a preempted job would);
5. the trainer exports ``<out>/final/model.safetensors`` (EMA weights by default, the bare
   transformer's names) and ``config.json`` holding the model config under ``"model"`` — the
   form ``pipelines.finetune --init <out>/final`` loads (``policy.model.load_backbone``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines import train_cli
from pipelines.config_flags import add_field_flags, field_overrides, name_flag, parse_field_value
from pipelines.usage import ArgumentParser, UsageError, command, local_or_repo_id, reading
from pretrain.config import MODEL_PRESETS, ModelConfig, get_model_config
from pretrain.objective_config import ObjectiveConfig
from pretrain.run_config import TRAIN_PRESETS
from pretrain.stream import read_shard_columns
from schemas import MAX_DIM
from schemas.config import ConfigError
from schemas.registry import did_you_mean

if TYPE_CHECKING:  # torch and the model code load after the arguments are checked
    from pretrain.codec import LatentCodec
    from pretrain.data import ShardSet
    from pretrain.model import ActionVideoTransformer

log = logging.getLogger("pretrain")
OBJECTIVE_OVERRIDES: tuple[str, ...] = ("action_dropout",)  # ObjectiveConfig fields a flag may override


# ---- what the data decides ----------------------------------------------------------------------


def data_geometry(shards: ShardSet) -> dict[str, Any]:
    """P, K, frame size (or stored latent shape) and text width of a curated dataset's first row."""
    first = shards.shards[0]
    cols = ["action", "frame_indices", "height", "width", "video_format", "latent_shape"]
    row = read_shard_columns(first, cols).slice(0, 1).to_pylist()  # local or streamed
    if not row:
        raise ValueError(f"{first}: shard has no rows")
    row = row[0]
    action = np.asarray(row["action"], dtype=np.float32)
    if action.size % MAX_DIM:
        raise ValueError(f"{first}: action has {action.size} values, not a multiple of {MAX_DIM}")
    return {
        "chunk": action.size // MAX_DIM,
        "num_future": len(row["frame_indices"]) - 1,
        "height": int(row["height"]),
        "width": int(row["width"]),
        "latent_shape": list(row["latent_shape"]) if row["video_format"] == "latent" else None,
        "text_dim": int(shards.manifest.text["dim"]) if shards.manifest.text else None,
    }


def check_geometry(geo: dict[str, Any], mcfg: ModelConfig, codec: LatentCodec, where: str) -> tuple[int, int]:
    """The latent grid (h, w) the model will see; a clear error when codec/model/data do not fit."""
    if geo["num_future"] < 1:
        raise ValueError(f"{where}: samples have no future frame (frame_indices of length 1)")
    if geo["latent_shape"] is not None:
        C, _, h, w = geo["latent_shape"]
    else:
        s = codec.spatial_compression
        if geo["height"] % s or geo["width"] % s:
            raise ValueError(
                f"{where}: frames are {geo['width']}×{geo['height']}, not divisible by the {codec.name!r} "
                f"codec's spatial factor {s}"
            )
        C, h, w = codec.latent_channels, geo["height"] // s, geo["width"] // s
    if mcfg.latent_channels != C:
        raise ValueError(
            f"{where}: latents have {C} channels, model preset {mcfg.name!r} takes {mcfg.latent_channels}"
        )
    if h % mcfg.patch[1] or w % mcfg.patch[2]:
        raise ValueError(f"{where}: latent grid {w}×{h} is not divisible by the model patch {mcfg.patch[1:]}")
    if geo["text_dim"] is not None and geo["text_dim"] > mcfg.text_dim:
        raise ValueError(
            f"{where}: text embeddings have {geo['text_dim']} dims, model preset {mcfg.name!r} takes "
            f"at most {mcfg.text_dim}"
        )
    return h, w


# ---- building blocks ----------------------------------------------------------------------------


def build_codec(
    args: argparse.Namespace, geometry: str, vae_temporal: int
) -> tuple[LatentCodec, dict[str, Any]]:
    """The ``--codec`` set up for the model's video geometry (one clip, or frame by frame)."""
    from pretrain.codec import make_model_codec

    kwargs = train_cli.codec_kwargs("pretrain", args)
    try:
        return make_model_codec(args.codec, kwargs, geometry, vae_temporal), kwargs
    except ValueError as err:  # a codec that cannot serve the preset's geometry: say what to use
        raise UsageError(f"--codec {args.codec} with --preset {args.preset}: {err}") from err


def build_transformer(
    mcfg: ModelConfig, init: str | None, codec: str = "wan-vae", revision: str | None = None
) -> tuple[ActionVideoTransformer, dict]:
    from pretrain.init import check_init_codec, resolve_init
    from pretrain.model import build_model

    model = build_model(mcfg)
    if not init:
        return model, {"source": None}
    src = resolve_init(init, revision)
    if src.kind == "gwp":
        from policy.model import load_backbone
        from pretrain.wan_adapter import backbone_mismatch

        theirs, sd = load_backbone(src.folder)
        diff = backbone_mismatch(theirs, mcfg)
        if diff:
            raise ValueError(
                f"{init}: checkpoint geometry differs from model preset {mcfg.name!r}: " + "; ".join(diff)
            )
        model.load_state_dict(sd, strict=True)
        log.info("loaded %d tensors of our checkpoint %s", len(sd), init)
        return model, {"source": init, "kind": "gwp", "loaded": len(sd), "fresh": []}
    from pretrain.wan_adapter import load_wan_backbone

    check_init_codec(src, codec)
    report = load_wan_backbone(model, src.folder, strict=True)
    log.info("loaded %d Wan tensors from %s; fresh: %s", report.loaded, init, ", ".join(report.fresh))
    return model, {"source": init, "kind": "wan", "loaded": report.loaded, "fresh": list(report.fresh)}


# ---- CLI ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp pretrain", description=__doc__.splitlines()[0])
    name_flag(p, "--preset", MODEL_PRESETS, default="debug", help="model preset")
    name_flag(
        p, "--train-preset", TRAIN_PRESETS, help="train config preset; default: the model preset's name"
    )
    train_cli.add_data_args(p)
    p.add_argument(
        "--model-override",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change one ModelConfig field of the preset, e.g. head_dim=32 (repeatable)",
    )
    p.add_argument(
        "--init",
        "--init-wan",
        dest="init",
        default=None,
        help="weights to start from: a diffusers Wan transformer (folder, Wan2.2 pipeline folder or repo "
        "id) or our checkpoint",
    )
    p.add_argument("--init-revision", default=None)
    train_cli.add_codec_args(p)
    p.add_argument("--latent-cache", default=None, help="folder for per-shard cached latents")
    add_field_flags(p, ObjectiveConfig, OBJECTIVE_OVERRIDES)
    train_cli.add_flow_args(p, ["video_shift"])  # no action target in pretraining: no action weight or shift
    train_cli.add_train_args(p, train_cli.TRAIN_OVERRIDES)
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO-Offload: optimizer on the CPU")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop (checkpointed) after this step, as a preempted job"
    )
    train_cli.add_run_args(p)
    return p


# ModelConfig fields that training takes from the dataset and the codec
FROM_DATA = {
    "chunk": "the dataset (its action chunk)",
    "num_future": "the dataset (its future frames)",
    "latent_channels": "the codec (--codec) or the dataset's stored latents",
}


def model_overrides(items: list[str]) -> dict[str, Any]:
    """``["heads=2", "head_dim=32"]`` → typed ModelConfig field values (unknown fields named)."""
    names = [f.name for f in fields(ModelConfig) if f.name != "name"]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if key in FROM_DATA:  # the shards and the codec fix these; a second value would contradict them
            raise UsageError(
                f"--model-override {item!r}: {key} is set by {FROM_DATA[key]}, not by an override"
            )
        if not sep or key not in names:
            hint = did_you_mean(key, names, n=1)
            raise UsageError(f"--model-override {item!r}: expected FIELD=VALUE of ModelConfig{hint}")
        try:
            out[key] = parse_field_value(ModelConfig, key, raw)
        except ConfigError as err:
            raise UsageError(f"--model-override {item!r}: {err}") from None
    return out


def objective_config(args: argparse.Namespace) -> ObjectiveConfig:
    """The objective with the flow and objective flags given; a value it refuses is the user's mistake."""
    try:
        return replace(
            ObjectiveConfig(flow=train_cli.flow_config(args)),
            **field_overrides(args, ObjectiveConfig, OBJECTIVE_OVERRIDES),
        )
    except ValueError as err:
        raise UsageError(f"bad objective config: {err}") from None


@command("gwp pretrain")
def main(argv: list[str] | None = None) -> int:
    # DeepSpeed compiles its C++ ops on first use, slowly: keep them in the project, once
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions")
    )
    logging.basicConfig(level=logging.INFO, format="[pretrain %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    cfg = train_cli.checked_train_config(
        "pretrain",
        args,
        args.train_preset or args.preset,
        offload_optimizer=args.offload_optimizer or None,
        activation_checkpointing=args.activation_checkpointing or None,
    )
    if cfg is None:  # a bad preset or value: one line naming the field and the allowed values
        return 2
    overrides = model_overrides(args.model_override)
    train_cli.check_data_arg(args)
    if args.init:
        local_or_repo_id("--init", args.init)
    train_cli.codec_kwargs("pretrain", args)  # a codec flag that does not fit, before torch loads
    ocfg = objective_config(args)

    import torch

    from pretrain import distributed as dd
    from pretrain.codec import LatentCache
    from pretrain.model import param_count
    from pretrain.objective import PretrainObjective
    from pretrain.stored_latents import check_stored_latents, describe
    from pretrain.trainer import Trainer  # imports DeepSpeed: only when training

    train_cli.apply_threads(args)
    shards = train_cli.open_shards(args)
    with reading("--data", args.data):  # data that does not fit the codec or model flags
        geo = data_geometry(shards)
    preset = get_model_config(args.preset)
    codec, codec_kw = build_codec(
        args,
        overrides.get("video_geometry", preset.video_geometry),
        overrides.get("vae_temporal", preset.vae_temporal),
    )
    channels = geo["latent_shape"][0] if geo["latent_shape"] else codec.latent_channels
    try:
        mcfg = replace(
            get_model_config(args.preset),
            chunk=geo["chunk"],
            num_future=geo["num_future"],
            latent_channels=channels,
            **overrides,
        )
    except ValueError as err:  # ModelConfig's checks: an override (or the data's geometry) it refuses
        raise UsageError(
            f"--preset {args.preset} with --model-override {args.model_override}: {err}"
        ) from err
    with reading("--data", args.data):
        h, w = check_geometry(geo, mcfg, codec, str(shards.shards[0]))
    objective = PretrainObjective(ocfg, codec, mcfg.text_dim, video_residual=mcfg.video_residual)
    torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed (ranks are synced anyway)
    with reading("--init", args.init):  # not a checkpoint, one that does not fit, or Wan with the pixel codec
        model, init = build_transformer(mcfg, args.init, args.codec, args.init_revision)
    with reading("--data", args.data):  # stored latents of another codec or geometry: refused, named
        stored = check_stored_latents(shards, codec, mcfg.video_geometry)
    if stored:  # the loader hands the stored latents to the objective: the codec never runs
        log.info("training on the dataset's stored latents, %s", describe(shards.latents))
    cache = LatentCache(args.latent_cache, codec) if args.latent_cache and not stored else None
    loader = train_cli.shard_loader(shards, cfg, args.num_workers, cache)
    tokens = sum(mcfg.token_counts(h, w).values())  # C + A + V
    record = {
        "model": mcfg.to_dict(),
        "objective": ocfg.to_dict(),
        "codec": {"name": codec.name, **codec_kw, "latent_grid": [h, w]},
        "init": init,
        "data": {
            "source": str(args.data),
            "revision": args.data_revision,
            "rows": shards.num_rows,
            "stream": train_cli.stream_record(args),
        },
        "tokens_per_sample": tokens,
        "parameters": param_count(model),
    }
    trainer = Trainer(model, objective, loader, cfg, config_record=record, progress=not args.no_progress)
    result = trainer.fit(resume=not args.no_resume, stop_at=args.stop_at)
    if dd.is_main():
        log.info(
            "%s at step %d (loss %s)%s",
            "finished" if result.final_dir else "stopped",
            result.steps,
            train_cli.loss_span(result.history),
            f"; weights in {result.final_dir}" if result.final_dir else "",
        )
    dd.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
