"""Stage 5: each window's 1+K frames decoded from every camera, composed and encoded (1:1).

The composition (:mod:`schemas.compose`) and the frame codec (:mod:`schemas.frames`) are the
contract shared with training and inference; this module only applies them to a window row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curation.config import VideoConfig
from schemas.compose import compose_views
from schemas.frames import encode_sample_frames

FrameDecoder = Callable[[Any, Sequence[int]], np.ndarray]


def render_window(window: Any, cfg: VideoConfig, decode: FrameDecoder | None = None) -> np.ndarray:
    """Decode the window's 1+K frames from every camera and compose them: ``[1+K, H, W, 3]``."""
    if decode is None:
        from curation.frames import decode_frames as decode
    views = {role: decode(ref, list(window.camera_indices)) for role, ref in window.cameras.items()}
    if not views:
        raise ValueError(f"window {window.sample_id} of episode {window.episode_id} has no cameras")
    return compose_views(views, cfg.width, cfg.height, cfg.fit)


def encode_window(
    window: Any, cfg: VideoConfig, fps: float, decode: FrameDecoder | None = None
) -> tuple[bytes, int, int]:
    """``(bytes, height, width)`` of the window's composed, encoded frames."""
    frames = render_window(window, cfg, decode)
    return (
        encode_sample_frames(frames, cfg.format, fps=fps, codec=cfg.codec, crf=cfg.crf),
        cfg.height,
        cfg.width,
    )


def make_compose_fn(cfg: VideoConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map``: a window row gains ``video``,
    ``video_format``, ``height`` and ``width`` (see :class:`curation.stages.windowing.Window`)."""
    from curation.stages.windowing import Window

    def compose_row(row: dict[str, Any]) -> dict[str, Any]:
        window = Window.from_row(row)
        video, h, w = encode_window(window, cfg, fps=window.frames_fps)
        return {**row, "video": video, "video_format": cfg.format, "height": h, "width": w}

    return compose_row
