"""LeRobot dataset statistics (``meta/stats.json``): mergeable per-feature min / max / mean / std / count.

Design: a writer folds each episode's :func:`episode_stats` into the dataset's with
:func:`merge_stats`, so statistics stream with the episodes and never need the whole dataset
in memory; :class:`RunningStats` is the statistics stage's :class:`~curation.stages.sketch.Moments`
(Chan et al.'s parallel update) plus the shape LeRobot writes. Vectors get
per-dimension statistics; videos get per-channel ones, shape ``[3, 1, 1]``, on pixel values
scaled to ``[0, 1]`` and sampled (at most 64 frames and ~100 px per side per episode), with
``count`` in frames as LeRobot counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from curation.formats.lerobot_meta import ACTION_KEY, INDEX_FEATURES, STATE_KEY
from curation.stages.sketch import Moments
from schemas import Episode

_IMAGE_STATS_MAX_FRAMES = 64  # frames sampled per episode for the per-channel image stats


@dataclass
class RunningStats(Moments):
    """Mergeable min / max / mean / std / count of one feature (per dim, or per channel): the
    statistics stage's moments, with the shape LeRobot writes them in."""

    shape: tuple[int, ...] = field(default_factory=tuple)
    per_item: int = 1  # rows per counted item: pixels per frame for images (LeRobot counts frames)

    @classmethod
    def of(cls, x_ND: np.ndarray, shape: tuple[int, ...] | None = None, per_item: int = 1) -> RunningStats:
        m = super().of(np.asarray(x_ND, np.float64))
        return replace(m, shape=shape or tuple(m.mean.shape), per_item=per_item)

    def to_dict(self) -> dict[str, list]:
        def shaped(a: np.ndarray) -> list:
            return np.asarray(a, np.float64).reshape(self.shape).tolist()

        return {
            "min": shaped(self.min),
            "max": shaped(self.max),
            "mean": shaped(self.mean),
            "std": shaped(np.sqrt(self.m2 / max(self.count, 1))),
            "count": [self.count // self.per_item],
        }


def image_stats(frames_THWC: np.ndarray) -> RunningStats:
    """Per-channel stats on pixels in [0, 1], from at most 64 frames and ~100 px per side."""
    t, h, w, _ = frames_THWC.shape
    step_t = max(1, t // _IMAGE_STATS_MAX_FRAMES)
    step_s = max(1, max(h, w) // 100)
    sampled = frames_THWC[::step_t, ::step_s, ::step_s]
    px = sampled.reshape(-1, 3).astype(np.float64) / 255.0
    return RunningStats.of(px, shape=(3, 1, 1), per_item=sampled.shape[1] * sampled.shape[2])


def episode_stats(ep: Episode, rows: pa.Table, frames: dict[str, np.ndarray]) -> dict[str, RunningStats]:
    """Stats of every feature of one episode (``frames``: feature key -> uint8 [T, H, W, 3])."""
    out = {
        STATE_KEY: RunningStats.of(ep.state),
        ACTION_KEY: RunningStats.of(ep.action),
    }
    for name in INDEX_FEATURES:
        out[name] = RunningStats.of(rows.column(name).to_numpy().reshape(-1, 1))
    for key, fr in frames.items():
        out[key] = image_stats(fr)
    return out


def merge_stats(total: dict[str, RunningStats], new: dict[str, RunningStats]) -> dict[str, RunningStats]:
    return {k: total[k].merge(v) if k in total else v for k, v in new.items()}
