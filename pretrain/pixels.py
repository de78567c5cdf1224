"""Torch twins of :mod:`schemas.pixels` (uint8 0..255 <-> float32 [-1, 1]) for tensors on any device.

Same constant, same float32 operations in the same order as the numpy contract, so a frame scaled
here and one scaled by :func:`schemas.pixels.to_unit_range` are equal bit for bit. Named apart from
the numpy functions so that a module using both reads unambiguously.
"""

from __future__ import annotations

import torch

from schemas.pixels import HALF_RANGE


def tensor_to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """float32 in [-1, 1] of a uint8 tensor (a new tensor; the input is left alone)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    return pixels.to(torch.float32).div_(HALF_RANGE).sub_(1.0)


def tensor_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 of a tensor in the model's range (clamped to [-1, 1] first)."""
    return ((x.float().clamp(-1, 1) + 1) * HALF_RANGE).round().to(torch.uint8)
