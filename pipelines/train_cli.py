"""Command-line pieces the two training drivers share (``pipelines.pretrain``, ``pipelines.finetune``).

Both read curated shards (``--data`` at ``--data-revision``) into a run folder (``--out``),
see video through one codec (``--codec`` …: the :class:`~pretrain.codec_choice.CodecChoice` fields),
start from a named train preset whose fields the flags in :data:`TRAIN_OVERRIDES` replace one by
one, take the flow settings of :data:`FLOW_OVERRIDES` (``FlowConfig``) the same way, and answer a
bad preset or value with one line on stderr and exit code 2. Every such flag is generated from its
dataclass field by :mod:`pipelines.config_flags` (type, Literal choices and help come from the
field). What differs (model presets, init, held-out split) stays in
each driver. Nothing here imports torch at module level: a usage error, or ``--help``, is
answered before torch is loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines.config_flags import add_field_flags, field_overrides
from pipelines.usage import UsageError, local_or_repo_id
from pretrain.codec_choice import LATENT_CODECS, CodecChoice
from pretrain.objective_config import FlowConfig
from pretrain.run_config import TrainConfig, get_train_config

if TYPE_CHECKING:
    from pretrain.codec import LatentCache
    from pretrain.data import ShardLoader, ShardSet
    from pretrain.stream import StreamConfig

# TrainConfig fields a flag may override (``--batch-size`` → ``batch_size``)
TRAIN_OVERRIDES: tuple[str, ...] = (
    "steps",
    "batch_size",
    "grad_accum",
    "lr",
    "warmup_steps",
    "zero_stage",
    "ema_decay",
    "ckpt_every",
    "seed",
)
CODEC_FLAGS: tuple[str, ...] = ("codec", "codec_patch", "vae")
# FlowConfig fields a flag may override (each driver adds the ones that apply to it)
FLOW_OVERRIDES: tuple[str, ...] = ("action_weight", "video_weight", "action_shift", "video_shift")


def open_shards(args: argparse.Namespace) -> ShardSet:
    """The ``--data`` dataset; an input that cannot be opened is the user's mistake, naming it."""
    from pipelines.usage import reading
    from pretrain.data import ShardSet

    with reading("--data", args.data):
        return ShardSet.open(args.data, args.data_revision, stream=stream_config(args))


def stream_config(args: argparse.Namespace) -> StreamConfig | None:
    """The streaming settings when ``--data`` streams (a URL, or ``--stream``), else None."""
    from pretrain.stream import StreamConfig, is_url

    if not (args.stream or is_url(str(args.data))):
        return None
    try:
        return StreamConfig(cache_mb=args.stream_cache_mb, cache_dir=args.stream_cache_dir).validate()
    except ValueError as err:
        raise UsageError(f"--stream-cache-mb: {err}") from None


def stream_record(args: argparse.Namespace) -> dict[str, Any] | None:
    """The streaming settings as the run record keeps them (None: the dataset is read locally)."""
    from dataclasses import asdict

    cfg = stream_config(args)
    return None if cfg is None else asdict(cfg)


def check_data_arg(args: argparse.Namespace) -> None:
    """A ``--data`` that is neither an existing folder, a Hub repo id nor a URL fails before any work."""
    from pretrain.stream import is_url

    if is_url(str(args.data)):  # any fsspec URL: streamed; its errors come when it is opened
        if args.data_revision:
            raise UsageError(f"--data-revision applies to a Hub repo id, not to the URL {args.data}")
        return
    local_or_repo_id("--data", str(args.data), bare_name_ok=True)  # as pretrain.data.resolve_dataset


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="curated shards folder, dataset repo id, or fsspec URL (streamed)"
    )
    p.add_argument("--data-revision", default=None)
    p.add_argument(
        "--stream",
        action="store_true",
        help="stream a Hub dataset repo by Parquet row group instead of downloading it first",
    )
    p.add_argument(
        "--stream-cache-mb",
        type=float,
        default=1024.0,
        help="local disk for streamed row groups (LRU, per process; StreamConfig.cache_mb)",
    )
    p.add_argument(
        "--stream-cache-dir", default=None, help="folder of the streaming cache (default: a temporary one)"
    )
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, final/)")


def add_codec_args(p: argparse.ArgumentParser) -> None:
    """``--codec`` (one of the codec registry's names), ``--codec-patch``, ``--vae``: the CodecChoice fields."""
    add_field_flags(p, CodecChoice, CODEC_FLAGS, defaults=CodecChoice())


def add_train_args(p: argparse.ArgumentParser, overrides: Sequence[str]) -> None:
    """One flag per overridden TrainConfig field (a ``Literal`` field's choices checked by argparse)."""
    add_field_flags(p, TrainConfig, overrides)
    p.add_argument("--num-workers", type=int, default=0)


def add_flow_args(p: argparse.ArgumentParser, overrides: Sequence[str]) -> None:
    """One flag per overridden FlowConfig field (unset: FlowConfig's default)."""
    add_field_flags(p, FlowConfig, overrides)


def flow_config(args: argparse.Namespace) -> FlowConfig:
    """FlowConfig with every flow flag given replaced; a value it refuses is the user's mistake."""
    try:
        return replace(FlowConfig(), **field_overrides(args, FlowConfig, FLOW_OVERRIDES))
    except ValueError as err:
        raise UsageError(f"bad flow config: {err}") from None


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (1 on a busy machine: more threads spin against other work)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's intra-op thread count for this process (unset: torch's default)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def train_config(args: argparse.Namespace, preset: str, **fixed: Any) -> TrainConfig:
    """The ``preset`` with every override flag given (and ``fixed`` fields) replaced; writes to ``--out``.
    A warm-up longer than the run is cut to the run."""
    given = field_overrides(args, TrainConfig, TRAIN_OVERRIDES)  # finetune has no --warmup-steps: absent
    over = {**given, **{k: v for k, v in fixed.items() if v is not None}}
    base = get_train_config(preset)
    steps = over.get("steps", base.steps)
    if "warmup_steps" not in over and base.warmup_steps > steps:  # cut in the same replace:
        over["warmup_steps"] = steps  # TrainConfig rejects a warm-up longer than the run
    return replace(base, output_dir=str(args.out), **over)


def checked_train_config(
    prog: str, args: argparse.Namespace, preset: str, **fixed: Any
) -> TrainConfig | None:
    """:func:`train_config`, or None after one line naming the field and the allowed values."""
    try:
        return train_config(args, preset, **fixed)
    except (KeyError, ValueError) as err:
        print(f"gwp {prog}: error: bad config: {err.args[0] if err.args else err}", file=sys.stderr)
        return None


def codec_kwargs(prog: str, args: argparse.Namespace) -> dict[str, Any]:
    """``make_codec`` keyword arguments of ``--codec``: the pixel patch, or the Wan VAE to load."""
    if args.codec == "pixel":
        return {"patch": args.codec_patch}
    if args.codec == "wan-vae":
        if not args.vae:
            raise UsageError("--codec wan-vae needs --vae <folder or repo id of the Wan VAE>")
        return {"path_or_repo": local_or_repo_id("--vae", args.vae)}
    raise UsageError(f"unknown codec {args.codec!r} ({', '.join(LATENT_CODECS)})")


def loss_span(history: list[dict[str, Any]]) -> str:
    """``first → last`` training loss for the closing log line (last = mean of the final three)."""
    import numpy as np

    losses = [rec["loss"] for rec in history]
    if not losses:
        return "- → -"
    return f"{losses[0]:.4f} → {float(np.mean(losses[-3:])):.4f}"


def shard_loader(
    shards: ShardSet, cfg: TrainConfig, num_workers: int, cache: LatentCache | None = None
) -> ShardLoader:
    """This rank's loader over ``shards`` (batch size and seed of the run config); on a dataset that
    stores latents (checked by the driver) it reads those and leaves the frames undecoded."""
    from pretrain import distributed as dd
    from pretrain.data import LoaderConfig, ShardLoader

    frames = shards.latents is None
    return ShardLoader(
        shards,
        LoaderConfig(batch_size=cfg.batch_size, seed=cfg.seed, num_workers=num_workers, load_frames=frames),
        rank=dd.env_rank(),
        world_size=dd.env_world_size(),
        latent_cache=cache,
    )
