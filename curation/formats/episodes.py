"""Episode steps every format shares: the last step of a reader's ``load``, the first of a writer.

* :func:`finish_episode` checks lengths (``length_mismatch``), emptiness (``empty_episode``),
  finiteness (``nan_action`` / ``nan_state``) and widths (``bad_shape``) with a format-level
  :class:`~schemas.errors.LoadError` naming the file and the episode, then builds and validates the
  :class:`~schemas.Episode` (``invalid_episode``). A reader that checks something first with its
  own, more precise message (LeRobot: which camera, which step) still ends here.
* :func:`episode_frames` (all frames of one camera, ``uint8 [T, H, W, 3]``, checked against the
  episode length) and :func:`common_embodiment` (one embodiment per written source) for writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from schemas import Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError


def finish_episode(
    *,
    path: Path,
    label: str,
    source: str,
    episode_id: str,
    index: int,
    embodiment: str,
    instruction: str,
    fps: float,
    state: np.ndarray,
    action: np.ndarray,
    cameras: dict[str, FrameRef],
    timestamps: np.ndarray | None = None,
) -> Episode:
    """Check lengths and finiteness with format-level reasons, then build and validate the Episode."""
    spec = get_embodiment(embodiment)
    state = np.asarray(state, dtype=np.float32)
    action = np.asarray(action, dtype=np.float32)
    if state.ndim == 1:
        state = state[:, None]
    if action.ndim == 1:
        action = action[:, None]
    t = action.shape[0]
    lengths = {"action": t, "state": state.shape[0]}
    lengths.update({f"camera {role}": ref.num_frames for role, ref in cameras.items()})
    if timestamps is not None:
        lengths["timestamps"] = len(timestamps)
    if len(set(lengths.values())) != 1:
        raise LoadError("length_mismatch", f"lengths differ: {lengths}", path, label)
    if t == 0:
        raise LoadError("empty_episode", "episode has zero steps", path, label)
    if not np.isfinite(action).all():
        bad = int((~np.isfinite(action)).sum())
        raise LoadError("nan_action", f"{bad} NaN/inf action value(s)", path, label)
    if not np.isfinite(state).all():
        bad = int((~np.isfinite(state)).sum())
        raise LoadError("nan_state", f"{bad} NaN/inf state value(s)", path, label)
    if action.shape[1] != spec.action_dim or state.shape[1] != spec.state_dim:
        raise LoadError(
            "bad_shape",
            f"state {state.shape} / action {action.shape} do not match {spec.name} "
            f"(state {spec.state_dim}, action {spec.action_dim})",
            path,
            label,
        )
    if timestamps is None:
        timestamps = np.arange(t, dtype=np.float64) / float(fps)
    episode = Episode(
        episode_id=episode_id,
        source=source,
        embodiment=spec.name,
        instruction=instruction,
        fps=float(fps),
        state=state,
        action=action,
        timestamps=np.asarray(timestamps, dtype=np.float64),
        cameras=cameras,
        source_path=str(path),
        source_index=index,
    )
    try:
        return episode.validate()
    except SchemaError as err:
        raise LoadError("invalid_episode", str(err), path, label) from err


def episode_frames(ep: Episode, role: str) -> np.ndarray:
    """All frames of one camera of ``ep``, uint8 [T, H, W, 3], checked against the episode length."""
    from curation.frames import decode_frames

    frames_THWC = decode_frames(ep.cameras[role])
    if frames_THWC.shape[0] != ep.length:
        raise ValueError(
            f"episode {ep.episode_id} camera {role}: {frames_THWC.shape[0]} frames, {ep.length} steps"
        )
    return frames_THWC


def common_embodiment(episodes: Sequence[Episode], fmt: str) -> str:
    if not episodes:
        raise ValueError(f"{fmt}: no episodes to write")
    names = sorted({ep.embodiment for ep in episodes})
    if len(names) != 1:
        raise ValueError(f"{fmt}: one embodiment per source, got {names}")
    return names[0]
