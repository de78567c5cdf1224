"""Camera composition: a robot's views placed into one image, the same at curation and at inference.

Layout (the paper's): an output of W × H is split into three slots::

    +-----------------------+
    |      top: high        |   H/2 rows, full width
    +-----------+-----------+
    | left_wrist|right_wrist|   H/2 rows, W/2 columns each
    +-----------+-----------+

Slot roles, first present wins: top ← ``high``, ``side``, ``low``; bottom-left ←
``left_wrist``, ``wrist`` (a single-arm robot's wrist camera); bottom-right ←
``right_wrist``. A slot with no view stays black; views in no slot are not used.

Each view is resized to its slot with PIL's bicubic filter, which widens its kernel when
shrinking (antialiased). ``fit="stretch"`` fills the slot; ``fit="pad"`` keeps the aspect
ratio and centres the view on black. Curation composes every window's frames with
:func:`compose_views`; the deployed policy composes each live observation with the same
function at the dataset's size and fit, so the model sees at inference what it saw in training.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from PIL import Image

FitMode = Literal["stretch", "pad"]  # how a view fills its slot: fill it, or keep the aspect ratio on black
FIT_MODES: tuple[str, ...] = typing.get_args(FitMode)
TOP_ROLES = ("high", "side", "low")
LEFT_ROLES = ("left_wrist", "wrist")
RIGHT_ROLES = ("right_wrist",)


def slot_roles(available: Sequence[str]) -> dict[str, str | None]:
    """Which role fills each slot (``top``, ``left``, ``right``), given the roles present."""

    def first(roles: Sequence[str]) -> str | None:
        return next((r for r in roles if r in available), None)

    return {"top": first(TOP_ROLES), "left": first(LEFT_ROLES), "right": first(RIGHT_ROLES)}


def resize_frames(frames_NHWC: np.ndarray, width: int, height: int, fit: str = "stretch") -> np.ndarray:
    """uint8 ``[N, height, width, 3]``: every frame resized (antialiased bicubic)."""
    if frames_NHWC.ndim != 4 or frames_NHWC.shape[-1] != 3 or frames_NHWC.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [N, H, W, 3], got {frames_NHWC.dtype} {frames_NHWC.shape}")
    n, h, w, _ = frames_NHWC.shape
    out = np.zeros((n, height, width, 3), np.uint8)
    if fit == "stretch" or (h * width == w * height):
        tw, th, x0, y0 = width, height, 0, 0
    elif fit == "pad":
        scale = min(width / w, height / h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0 = (width - tw) // 2, (height - th) // 2
    else:
        raise ValueError(f"fit must be 'stretch' or 'pad', got {fit!r}")
    for i in range(n):
        if (h, w) == (th, tw):
            out[i, y0 : y0 + th, x0 : x0 + tw] = frames_NHWC[i]
        else:
            im = Image.fromarray(frames_NHWC[i]).resize((tw, th), Image.Resampling.BICUBIC)
            out[i, y0 : y0 + th, x0 : x0 + tw] = np.asarray(im)
    return out


def compose_views(
    views: Mapping[str, np.ndarray], width: int, height: int, fit: str = "stretch"
) -> np.ndarray:
    """Compose ``role -> uint8 [N, h, w, 3]`` views (same N) into ``[N, height, width, 3]``."""
    if height % 2 or width % 2:
        raise ValueError(f"composed size must be even, got {width}x{height}")
    counts = {role: v.shape[0] for role, v in views.items()}
    if not counts:
        raise ValueError("compose_views needs at least one view")
    if len(set(counts.values())) != 1:
        raise ValueError(f"views have different frame counts: {counts}")
    n = next(iter(counts.values()))
    out = np.zeros((n, height, width, 3), np.uint8)
    roles = slot_roles(list(views))
    hh, hw = height // 2, width // 2
    boxes = {"top": (0, 0, width, hh), "left": (hh, 0, hw, hh), "right": (hh, hw, hw, hh)}
    if not any(roles.values()):
        raise ValueError(f"no view fits a slot; roles present: {sorted(views)}")
    for slot, role in roles.items():
        if role is None:
            continue
        y, x, w, h = boxes[slot]
        out[:, y : y + h, x : x + w] = resize_frames(views[role], w, h, fit)
    return out
