"""Exponential moving average of the trainable weights, kept by the trainer in fp32.

Design: one :class:`EMA` per run, beside the DeepSpeed engine rather than inside it, so the
average never depends on the training precision. Under ZeRO-3 each rank averages only its own
parameter partition (``p.ds_tensor``), so EMA memory shrinks with the world size like the
weights do; :meth:`EMA.full_state_dict` all-gathers the partitions for export. The state dict
is what the checkpoint stores (``pretrain/checkpoint.py``): in the shared client state, or per
rank under ZeRO-3.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _is_zero3_param(p: nn.Parameter) -> bool:
    return hasattr(p, "ds_tensor")


class EMA:
    """fp32 exponential moving average of the trainable parameters: ``e ← d·e + (1 − d)·w``.

    Under ZeRO-3 the average is over this rank's partition ``p.ds_tensor`` (1-D, padded);
    :meth:`full_state_dict` gathers the partitions back to full tensors (a collective).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.zero3 = any(_is_zero3_param(p) for _, p in self.params)
        self.shadow = {n: self._source(p).detach().float().clone() for n, p in self.params}
        self.updates = 0

    def _source(self, p: nn.Parameter) -> torch.Tensor:
        return p.ds_tensor if self.zero3 else p.data

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params:
            self.shadow[n].lerp_(self._source(p).float(), 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "zero3": self.zero3,
            "shadow": {n: t.cpu() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["zero3"] != self.zero3 or set(state["shadow"]) != set(self.shadow):
            raise ValueError(
                "EMA state does not match this model/partitioning (names or ZeRO-3 layout differ)"
            )
        for n, t in state["shadow"].items():
            if t.shape != self.shadow[n].shape:
                raise ValueError(
                    f"EMA state: {n} has shape {list(t.shape)}, model needs {list(self.shadow[n].shape)}"
                )
            self.shadow[n].copy_(t)
        self.updates = int(state["updates"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 tensors on the CPU (collective under ZeRO-3: every rank must call)."""
        if not self.zero3:
            return {n: t.detach().cpu().clone() for n, t in self.shadow.items()}
        out = {}
        world = dist.get_world_size()
        for n, p in self.params:
            part = self.shadow[n]
            parts = [torch.empty_like(part) for _ in range(world)]
            dist.all_gather(parts, part)
            out[n] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu().clone()
        return out
