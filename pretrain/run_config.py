"""Run configuration: how to train (not what to train), as one frozen dataclass and named presets.

``TrainConfig`` is the single source the DeepSpeed config is derived from
(``pretrain/engine.py:deepspeed_config``); nothing else reads a DeepSpeed JSON. Every field is
validated on construction and an error names the field and its allowed values.

Schedule: linear warm-up from 0 to ``lr`` over ``warmup_steps`` optimizer steps, then a
cosine decay to ``lr · min_lr_ratio`` at ``steps`` (``lr_schedule="constant"`` keeps ``lr``
after warm-up). A *step* is one optimizer step = ``grad_accum`` micro-batches of
``batch_size`` samples on each rank; the global batch is ``batch_size · grad_accum · world``.

Presets (``get_train_config(name)``, misspelt names answer "did you mean …"):

* ``debug``    — CPU, tiny runs: fp32, ZeRO-2 with a torch AdamW (no compiled ops), 20 steps.
* ``demo``     — the CPU demo: ``debug`` settings, 400 steps of 32, lr 1e-3, EMA 0.99, no checkpoints.
* ``small``    — one GPU: bf16, ZeRO-2, 20 k steps, EMA 0.999.
* ``wan22-5b`` — the paper's scale: bf16, ZeRO-3, activation checkpointing, EMA 0.9999.

Derive variants with :func:`dataclasses.replace` (validation runs again).
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass
from typing import Any, Literal

from schemas.config import from_dict
from schemas.registry import Registry

Optimizer = Literal["adamw", "adam"]
Precision = Literal["auto", "bf16", "fp32"]
ZeroStage = Literal[0, 1, 2, 3]
LrSchedule = Literal["cosine", "constant"]
ExportWeights = Literal["ema", "raw"]
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
ZERO_STAGES: tuple[int, ...] = typing.get_args(ZeroStage)
LR_SCHEDULES: tuple[str, ...] = typing.get_args(LrSchedule)
EXPORT_WEIGHTS: tuple[str, ...] = typing.get_args(ExportWeights)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"
    # optimiser
    optimizer: Optimizer = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    # schedule
    lr_schedule: LrSchedule = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # DeepSpeed
    zero_stage: ZeroStage = 2
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states + step on the CPU (DeepSpeedCPUAdam)
    precision: Precision = "auto"  # auto → bf16 where the device has it, fp32 otherwise (always fp32 on CPU)
    activation_checkpointing: bool = False
    # weights kept by us
    ema_decay: float = 0.0  # 0 disables EMA; otherwise in (0, 1)
    export_weights: ExportWeights = "ema"  # in model.safetensors ("ema" falls back to raw without EMA)
    # length and batch
    steps: int = 1000
    batch_size: int = 8  # micro-batch per rank
    grad_accum: int = 1
    # records
    log_every: int = 10
    ckpt_every: int = 500  # 0 = only the final checkpoint
    keep_checkpoints: int = 3  # most recent complete checkpoints kept (≥ 2 so a corrupt one has a fallback)
    seed: int = 0
    output_dir: str = "runs/pretrain"

    def __post_init__(self) -> None:
        # tuples may arrive as lists from JSON
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        self.validate()

    def _bad(self, field: str, why: str) -> ValueError:
        return ValueError(f"TrainConfig {self.name!r}: {field} {why}")

    def validate(self) -> TrainConfig:
        for f, allowed in (
            ("optimizer", OPTIMIZERS),
            ("precision", PRECISIONS),
            ("lr_schedule", LR_SCHEDULES),
            ("export_weights", EXPORT_WEIGHTS),
        ):
            if getattr(self, f) not in allowed:
                raise self._bad(f, f"must be one of {list(allowed)}, got {getattr(self, f)!r}")
        if self.zero_stage not in ZERO_STAGES or isinstance(self.zero_stage, bool):
            raise self._bad("zero_stage", f"must be one of {list(ZERO_STAGES)}, got {self.zero_stage!r}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise self._bad("offload_optimizer", "needs zero_stage 1, 2 or 3 (ZeRO-Offload), got stage 0")
        for f in ("steps", "batch_size", "grad_accum", "log_every"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self._bad(f, f"must be an int ≥ 1, got {v!r}")
        for f in ("warmup_steps", "ckpt_every", "seed"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise self._bad(f, f"must be an int ≥ 0, got {v!r}")
        if not isinstance(self.keep_checkpoints, int) or self.keep_checkpoints < 2:
            raise self._bad("keep_checkpoints", f"must be an int ≥ 2, got {self.keep_checkpoints!r}")
        if not self.lr > 0:
            raise self._bad("lr", f"must be > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise self._bad("betas", f"must be two values in [0, 1), got {self.betas!r}")
        if not self.adam_eps > 0:
            raise self._bad("adam_eps", f"must be > 0, got {self.adam_eps!r}")
        if not self.weight_decay >= 0:
            raise self._bad("weight_decay", f"must be ≥ 0, got {self.weight_decay!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise self._bad("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        if not self.grad_clip >= 0:
            raise self._bad("grad_clip", f"must be ≥ 0 (0 disables), got {self.grad_clip!r}")
        if not (self.ema_decay == 0 or 0 < self.ema_decay < 1):
            raise self._bad("ema_decay", f"must be 0 (off) or in (0, 1), got {self.ema_decay!r}")
        if self.warmup_steps > self.steps:
            raise self._bad("warmup_steps", f"must be ≤ steps ({self.steps}), got {self.warmup_steps}")
        if not self.output_dir:
            raise self._bad("output_dir", "must be a non-empty path")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, d, "TrainConfig")


TRAIN_PRESETS: Registry[TrainConfig] = Registry("train config preset")


def register_train_config(cfg: TrainConfig) -> TrainConfig:
    return TRAIN_PRESETS.register(cfg.name, cfg)


def get_train_config(name: str) -> TrainConfig:
    return TRAIN_PRESETS.get(name)


def train_config_names() -> list[str]:
    return TRAIN_PRESETS.names()


register_train_config(
    TrainConfig(
        name="debug",
        lr=1e-3,
        warmup_steps=2,
        zero_stage=2,
        precision="fp32",
        ema_decay=0.9,
        steps=20,
        batch_size=2,
        log_every=1,
        ckpt_every=10,
        output_dir="runs/debug",
    )
)
register_train_config(
    TrainConfig(
        name="small",
        lr=3e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        warmup_steps=1000,
        min_lr_ratio=0.1,
        zero_stage=2,
        precision="auto",
        ema_decay=0.999,
        steps=20_000,
        batch_size=16,
        log_every=20,
        ckpt_every=1000,
        output_dir="runs/small",
    )
)
register_train_config(
    TrainConfig(
        name="wan22-5b",
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=0.01,
        warmup_steps=2000,
        min_lr_ratio=0.1,
        zero_stage=3,
        precision="bf16",
        activation_checkpointing=True,
        ema_decay=0.9999,
        steps=100_000,
        batch_size=2,
        grad_accum=4,
        log_every=10,
        ckpt_every=1000,
        output_dir="runs/wan22-5b",
    )
)
register_train_config(
    TrainConfig(
        name="demo",  # the CPU demo's fine-tunes (pipelines/demo.py)
        lr=1e-3,
        warmup_steps=20,
        zero_stage=2,
        precision="fp32",
        ema_decay=0.99,
        steps=2000,
        batch_size=32,
        log_every=20,
        ckpt_every=500,  # a rerun of an interrupted demo resumes from the last one
        output_dir="runs/demo",
    )
)
