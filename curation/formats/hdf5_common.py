"""HDF5 and episode helpers shared by the HDF5 readers and writers (robomimic, ALOHA) and raw video.

Design: each format module keeps its own layout; what they have in common lives here, once:

* opening a file (:func:`open_hdf5`) and reading a dataset (:func:`read_dataset`) with the
  ``LoadError`` reasons ``missing_file`` / ``bad_file`` / ``missing_key`` naming the file;
* refusing to follow soft or external links (:func:`link_problem`) and turning every odd member
  into a ref that fails with ``unexpected_member`` (:func:`unexpected_ref`,
  :func:`raise_if_unexpected`), so it reaches the rejection ledger instead of being skipped;
* the last step of every ``load``: :func:`finish_episode` checks lengths (``length_mismatch``),
  emptiness, finiteness (``nan_action`` / ``nan_state``) and widths (``bad_shape``), then builds
  and validates the :class:`~schemas.Episode` (``invalid_episode``);
* for writers: :func:`episode_frames` (all frames of one camera, ``uint8 [T, H, W, 3]``) and
  :func:`common_embodiment` (one embodiment per written source).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.formats.base import EpisodeRef
from schemas import Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError


def open_hdf5(path: str | Path):
    """``h5py.File`` opened read-only, or ``LoadError`` (missing_file / bad_file) naming ``path``."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise LoadError("missing_file", "file does not exist", path)
    if not h5py.is_hdf5(str(path)):
        raise LoadError("bad_file", "not an HDF5 file (no HDF5 signature)", path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise LoadError("bad_file", f"cannot open as HDF5: {err}", path) from err


def image_shape_ok(shape: tuple[int, ...]) -> bool:
    """Frames [T, H, W] (gray) or [T, H, W, C] with C = 1, 3 or 4 (:func:`curation.frames.to_rgb8`)."""
    return len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))


def read_dataset(group: Any, key: str, path: Path, episode: str) -> np.ndarray:
    """The whole dataset ``key`` under ``group``, or ``LoadError("missing_key")``."""
    import h5py

    obj = group.get(key)  # h5py: "/a/b" is from the file root, "a/b" from the group
    if not isinstance(obj, h5py.Dataset):
        raise LoadError("missing_key", f"no dataset {key!r} under {group.name}", path, episode)
    return np.asarray(obj[()])


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


def link_problem(group: Any, name: str) -> str | None:
    """Why member ``name`` of ``group`` must not be followed: a soft or external link; None for a hard link."""
    import h5py

    link = group.get(name, getlink=True)
    where = f"{group.name.rstrip('/')}/{name}"
    if isinstance(link, h5py.SoftLink):
        return f"{where} is a soft link to {link.path} (not followed)"
    if isinstance(link, h5py.ExternalLink):
        return f"{where} is an external link to {link.filename}:{link.path} (not followed)"
    return None


def unexpected_ref(fmt: str, root: Path, path: Path, index: int, source: str, member: str, problem: str):
    """A ref that fails to load with ``unexpected_member``: puts one odd HDF5 member in the ledger."""
    return EpisodeRef(
        format=fmt,
        root=str(root),
        path=str(path),
        index=index,
        source=source,
        locator={"unexpected": member, "problem": problem},
    )


def raise_if_unexpected(ref: EpisodeRef) -> None:
    if "unexpected" in ref.locator:
        raise LoadError("unexpected_member", ref.locator["problem"], ref.path, ref.locator["unexpected"])


def attr_str(obj: Any, name: str) -> str:
    value = obj.attrs.get(name)
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


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
