"""A tiny stand-in for training tests: an MLP regressing a fixed linear map, and its data.

The trainer promises to train any ``nn.Module`` with a loss function; these two are the smallest
pair that exercises it for real (DeepSpeed engine, checkpoints, resume), and
:func:`standin_config` the recipe that trains it in 12 steps. :class:`SynthLoader`'s
batches are a pure function of (seed, position, rank), so a resumed run sees exactly the
batches an uninterrupted one would, and its position is the whole of its state.

Shapes: ``x_BD``, ``y_BD`` with ``D`` = 8.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from pretrain.run_config import TrainConfig, get_train_config

D = 8


class StandIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, 32)
        self.fc2 = nn.Linear(32, D)
        self.register_buffer("scale", torch.ones(D))
        self.activation_checkpointing = False

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x_BD))) * self.scale


class SynthLoader:
    """Endless batches, batch i of rank r a pure function of (seed, i, r); resumable position."""

    def __init__(self, batch: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.batch, self.rank, self.world, self.seed, self.pos = batch, rank, world, seed, 0
        self.W_DD = torch.randn(D, D, generator=torch.Generator().manual_seed(1234)) / D**0.5

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.pos * self.world + self.rank)
            x_BD = torch.randn(self.batch, D, generator=g)
            self.pos += 1
            yield {"x": x_BD, "y": x_BD @ self.W_DD}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def standin_config(out: Path, **kw) -> TrainConfig:
    """The debug preset at a learning rate the stand-in learns at in 12 steps; ``kw`` overrides."""
    base = replace(
        get_train_config("debug"),
        lr=2e-2,
        warmup_steps=2,
        steps=12,
        ckpt_every=6,
        batch_size=4,
        ema_decay=0.8,
        output_dir=str(out),
    )
    return replace(base, **kw)
