"""Pixel scaling between stored frames (uint8, 0..255) and the model's pixel range (float32, [-1, 1]).

::

    x = p / 127.5 - 1                          to_unit_range, uint8 [...] -> float32 [...]
    p = round((clip(x, -1, 1) + 1) * 127.5)    to_uint8,      float [...] -> uint8 [...]

``to_uint8(to_unit_range(p)) == p`` for every uint8 ``p``. The arithmetic is float32 in both
directions, in this order, so a torch caller that applies :data:`HALF_RANGE` the same way
(``pretrain/pixels.py``) gets the same bits as this numpy code; the training loader, the video
objective, open-loop evaluation and the deployed policy all go through one of the two.
"""

from __future__ import annotations

import numpy as np

HALF_RANGE = 127.5  # half of the uint8 range: 0 -> -1, 255 -> +1


def to_unit_range(pixels_uint8: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1], same shape."""
    p = np.asarray(pixels_uint8)
    if p.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {p.dtype}")
    out = p.astype(np.float32)
    out /= np.float32(HALF_RANGE)
    out -= np.float32(1.0)
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 of values in the model's range (clipped to [-1, 1] first), same shape."""
    y = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return np.rint((y + np.float32(1.0)) * np.float32(HALF_RANGE)).astype(np.uint8)
