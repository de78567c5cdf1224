"""Build a validated :class:`schemas.Sample` from a window and its encoded frames (1:1).

The last per-row step before shard writing: normalise the window's raw action chunk and
state with the embodiment's statistics (:mod:`schemas.normalize`), attach the
encoded frames from :mod:`curation.stages.compose`, the episode's quality scores and,
when the caption stage ran, the caption and text embedding. The result is validated, so a
bad row fails here naming the field rather than in the shard writer.

The shard phase does the same for a whole work-part table at once
(:func:`curation.phases.pack.normalise_raw_table`), with the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from curation.stages.windowing import Window
from schemas import EmbodimentStats, Sample, get_embodiment
from schemas.normalize import NormConfig, normalize_action, normalize_state
from schemas.sample import QUALITY_KEYS

_NORM = NormConfig()


def make_sample(
    window: Window,
    video: bytes,
    *,
    video_format: str,
    height: int,
    width: int,
    stats: EmbodimentStats,
    norm: NormConfig = _NORM,
    caption: str = "",
    quality: Mapping[str, float] | None = None,
    text_embedding: np.ndarray | None = None,
    latent_shape: tuple[int, ...] = (),
) -> Sample:
    """The shard row of ``window``; ``quality`` adds to (and overrides) the window's own scores."""
    spec = get_embodiment(window.embodiment)
    action, action_mask = normalize_action(window.action, window.state, spec, stats, norm)
    state, state_mask = normalize_state(window.state, spec, stats, norm)
    scores = {**window.quality, **(quality or {})}
    return Sample(
        sample_id=window.sample_id,
        episode_id=window.episode_id,
        source=window.source,
        embodiment=window.embodiment,
        embodiment_id=spec.id,
        start_frame=window.start_frame,
        frame_indices=window.frame_indices,
        instruction=window.instruction,
        caption=caption,
        video=video,
        video_format=video_format,
        height=int(height),
        width=int(width),
        action=action,
        action_mask=action_mask,
        state=state,
        state_mask=state_mask,
        quality={k: float(v) for k, v in scores.items() if k in QUALITY_KEYS and v is not None},
        text_embedding=None if text_embedding is None else np.asarray(text_embedding, dtype=np.float32),
        latent_shape=tuple(latent_shape),
    ).validate()


def make_sample_fn(
    stats: Mapping[str, EmbodimentStats], norm: NormConfig = _NORM
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map``: a window row that went through
    :func:`curation.stages.compose.make_compose_fn` (``video``, ``video_format``, ``height``,
    ``width``; optionally ``caption``, ``clip_score``, ``text_embedding``) → a Sample row."""
    stats = dict(stats)

    def sample_row(row: dict[str, Any]) -> dict[str, Any]:
        window = Window.from_row(row)
        if window.embodiment not in stats:
            raise KeyError(
                f"no normalisation statistics for embodiment {window.embodiment!r} (have {sorted(stats)})"
            )
        extra = {"clip_score": row["clip_score"]} if row.get("clip_score") is not None else {}
        return make_sample(
            window,
            row["video"],
            video_format=row["video_format"],
            height=row["height"],
            width=row["width"],
            stats=stats[window.embodiment],
            norm=norm,
            caption=row.get("caption") or "",
            quality=extra,
            text_embedding=row.get("text_embedding"),
            latent_shape=tuple(row.get("latent_shape") or ()),
        ).to_row()

    return sample_row
