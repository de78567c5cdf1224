"""DeepSpeed engine: the only module that imports DeepSpeed (model code knows nothing of it).

What it does, given any ``nn.Module`` and a :class:`~pretrain.run_config.TrainConfig`:

* **Config** — :func:`deepspeed_config` derives the DeepSpeed JSON from the typed run config:
  micro-batch, accumulation, clipping, ZeRO stage (0–3), optional optimizer offload to the CPU,
  bf16 only where the device has it (CPU always fp32). No JSON files to keep in sync.
* **Optimizer** — a torch ``AdamW``/``Adam`` handed to ``deepspeed.initialize`` (a *client*
  optimizer, so no C++ op is compiled); with ``offload_optimizer`` the optimizer is instead
  declared in the DeepSpeed config, which builds ``DeepSpeedCPUAdam`` (compiled once into
  ``TORCH_EXTENSIONS_DIR``). The warm-up + cosine schedule is a ``LambdaLR`` created by
  DeepSpeed from our callable, so its state travels in DeepSpeed's checkpoint.
* **EMA** and **checkpoints** live beside the engine: :class:`~pretrain.ema.EMA` (fp32,
  per-partition under ZeRO-3) and :mod:`pretrain.checkpoint` (save / verify / resume, RNG
  state), which drive the engine through its methods and import no DeepSpeed.
* **Export** — ``model.safetensors`` (EMA or raw weights, fp32) + ``config.json``. Raw weights
  come from DeepSpeed's ``zero_to_fp32`` over the final checkpoint (the fp32 master copy,
  consolidated across ZeRO partitions) when the run is partitioned or in bf16, else from the
  module itself; EMA partitions are all-gathered.
* **Shared memory** — on CPU, DeepSpeed's all-reduce maps a 69 MB ``/dev/shm`` segment per rank
  that it never unlinks; :func:`release_deepspeed_cpu_shm` unlinks it once all ranks have it
  mapped, so runs (killed ones too) leave nothing in RAM-backed tmpfs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from safetensors.torch import save_file
from torch import nn

from pretrain import distributed as dd
from pretrain.checkpoint import atomic_write
from pretrain.ema import EMA
from pretrain.run_config import TrainConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------- config


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """ "bf16" or "fp32" for this device; an explicit bf16 on a device without it is an error."""
    has_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if cfg.precision == "auto":
        return "bf16" if has_bf16 else "fp32"
    if cfg.precision == "bf16" and not has_bf16:
        raise ValueError(
            f"TrainConfig {cfg.name!r}: precision 'bf16' needs a CUDA device with bf16, this run is on "
            f"{device.type}; use precision 'auto' or 'fp32'"
        )
    return cfg.precision


def lr_multiplier(cfg: TrainConfig, step: int) -> float:
    """Factor on ``cfg.lr`` for optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def deepspeed_config(cfg: TrainConfig, world_size: int, precision: str) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=torch.cuda.is_available())
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # our trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "seed": cfg.seed,
    }
    if cfg.offload_optimizer:
        kind = "AdamW" if cfg.optimizer == "adamw" else "Adam"
        ds["optimizer"] = {
            "type": kind,
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": cfg.adam_eps,
                "weight_decay": cfg.weight_decay,
            },
        }
    return ds


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kw = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay}
    # foreach=False: the same arithmetic order on every run, so resumed curves match bit for bit
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, foreach=False, **kw)
    return torch.optim.Adam(params, foreach=False, **kw)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Models opt in through an ``activation_checkpointing`` attribute (ours) or the HF method."""
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = True
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    else:
        raise ValueError(
            f"{type(model).__name__} has no 'activation_checkpointing' switch; set "
            "activation_checkpointing=False or add the attribute to the model"
        )


# --------------------------------------------------------------------------- engine


@dataclass
class TrainEngine:
    """What the trainer holds: the DeepSpeed engine plus the state kept beside it."""

    engine: Any  # deepspeed.DeepSpeedEngine
    cfg: TrainConfig
    dist: dd.DistInfo
    precision: str  # resolved: "bf16" | "fp32"
    ds_config: dict[str, Any]
    ema: EMA | None

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])


DS_SHM_DIR = Path("/dev/shm")
DS_SHM_PREFIX = "deepspeed_allreduce_buffer"


def deepspeed_shm_name(rank: int) -> str:
    """Name of the POSIX shared-memory segment DeepSpeed's CPU all-reduce gives ``rank`` in this run."""
    addr = os.environ.get("MASTER_ADDR", "")
    port = os.environ.get("MASTER_PORT", "")
    return f"{DS_SHM_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def release_deepspeed_cpu_shm(info: dd.DistInfo) -> bool:
    """Unlink this rank's DeepSpeed CPU all-reduce segment once every rank has mapped it.

    Why: DeepSpeed's CPU comm op (``deepspeed/ops/csrc/cpu/comm/shm.cpp``, ``shm_initialize``,
    run from ``TorchBackend.__init__`` in ``deepspeed/comm/torch.py`` when the launcher's
    ``LOCAL_SIZE`` equals the world size) creates one ~69 MB segment per rank,
    ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}``, maps
    every peer's, and never ``shm_unlink``s them: each multi-rank CPU run (a SIGKILLed one
    too) left ``world_size`` × 69 MB of RAM-backed tmpfs behind until reboot.

    ``shm_initialize`` returns only after it has opened every peer's segment, so once
    DeepSpeed's comm backend exists on all ranks (the barrier) nobody needs the names any
    more. Each rank removes its own; POSIX keeps the mappings valid after an unlink, so the
    shm all-reduce keeps working and nothing is left if the process dies later. Only on the
    CPU path (gloo, DeepSpeed CPU accelerator) and only this run's name for this rank.
    Collective: every rank must call it. Returns True when a segment was removed.
    """
    if info.backend != "gloo" or get_accelerator().device_name() != "cpu":
        return False
    dd.barrier()
    try:
        (DS_SHM_DIR / deepspeed_shm_name(info.rank)).unlink()
    except FileNotFoundError:  # LOCAL_SIZE != world size (no shm op), or already released
        return False
    return True


def build_engine(model: nn.Module, cfg: TrainConfig, info: dd.DistInfo | None = None) -> TrainEngine:
    """Wrap ``model`` (any ``nn.Module``) in a DeepSpeed engine configured from ``cfg``."""
    info = info or dd.init_distributed()
    precision = resolve_precision(cfg, info.device)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    ds_cfg = deepspeed_config(cfg, info.world_size, precision)
    model.to(info.device)
    if info.world_size > 1:  # ZeRO-3 partitions each rank's own copy: make the copies identical first
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizer = None if cfg.offload_optimizer else build_optimizer(cfg, params)

    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(cfg, s))

    # DeepSpeed's comm backend would be created inside deepspeed.initialize; create it here
    # (same call, same backend) so its CPU shared memory can be released straight away
    deepspeed.init_distributed(
        dist_backend=get_accelerator().communication_backend_name(), dist_init_required=False
    )
    release_deepspeed_cpu_shm(info)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=params,
        lr_scheduler=scheduler,
        config=ds_cfg,
        dist_init_required=False,
    )
    ema = EMA(engine.module, cfg.ema_decay) if cfg.ema_decay > 0 else None
    return TrainEngine(engine, cfg, info, precision, ds_cfg, ema)


# --------------------------------------------------------------------------- export


def _buffers(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    names = {n for n, _ in module.named_parameters()}
    for n, t in module.state_dict().items():
        if n not in names:
            yield n, t


def raw_state_dict(te: TrainEngine, tag_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """fp32 weights on rank 0 (None elsewhere). Collective-free except the ZeRO-3 fallback."""
    partitioned = te.cfg.zero_stage >= 1 or te.precision == "bf16"
    if partitioned and tag_dir is not None:
        if not te.dist.is_main:
            return None
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        return {n: t.float().clone() for n, t in sd.items()}
    if te.cfg.zero_stage == 3:  # no checkpoint at hand: gather the working-precision partitions
        params = list(te.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            sd = {n: p.detach().float().cpu().clone() for n, p in te.module.named_parameters()}
        sd.update((n, b.detach().cpu().clone()) for n, b in _buffers(te.module))
        return sd if te.dist.is_main else None
    if not te.dist.is_main:
        return None
    return {
        n: t.detach().float().cpu().clone() if t.is_floating_point() else t.cpu().clone()
        for n, t in te.module.state_dict().items()
    }


def export_weights(
    te: TrainEngine,
    out_dir: str | os.PathLike,
    tag_dir: Path | None = None,
    which: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` (rank 0). Collective.

    ``which``: "ema" (default from the run config; falls back to raw without EMA) or "raw".
    ``config``: the resolved configuration to store beside the weights (model config etc.);
    the run config, precision and DeepSpeed config are added under ``"train"``.
    """
    which = which or te.cfg.export_weights
    if which not in ("ema", "raw"):
        raise ValueError(f"export which must be 'ema' or 'raw', got {which!r}")
    if which == "ema" and te.ema is None:
        which = "raw"
    if which == "ema":
        sd = te.ema.full_state_dict()  # collective under ZeRO-3
        frozen = {n: p for n, p in te.module.named_parameters() if not p.requires_grad}
        if frozen and te.cfg.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(frozen.values()), modifier_rank=None):
                sd.update((n, p.detach().float().cpu().clone()) for n, p in frozen.items())
        else:
            sd.update((n, p.detach().float().cpu().clone()) for n, p in frozen.items())
        sd.update((n, b.detach().cpu().clone()) for n, b in _buffers(te.module))
        sd = sd if te.dist.is_main else None
    else:
        sd = raw_state_dict(te, tag_dir)
    out = Path(out_dir)
    if te.dist.is_main:
        assert sd is not None
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.contiguous() for n, t in sorted(sd.items())}
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "weights": which})
        resolved = dict(config or {})
        resolved["train"] = {
            "config": te.cfg.to_dict(),
            "precision": te.precision,
            "world_size": te.dist.world_size,
            "deepspeed": te.ds_config,
            "exported_weights": which,
        }
        atomic_write(out / CONFIG_FILE, json.dumps(resolved, indent=2, sort_keys=True, default=str))
    dd.barrier()
    return out / WEIGHTS_FILE if te.dist.is_main else None
