"""HDF5 helpers shared by the HDF5 readers (robomimic, ALOHA) and the source inspector.

Design: each format module keeps its own layout; what they do alike with h5py lives here, once:

* opening a file (:func:`open_hdf5`) and reading a dataset (:func:`read_dataset`) with the
  ``LoadError`` reasons ``missing_file`` / ``bad_file`` / ``missing_key`` naming the file;
  :func:`image_shape_ok` is the frame-array shape every HDF5 camera must have;
* refusing to follow soft or external links (:func:`link_problem`) and turning every odd member
  into a ref that fails with ``unexpected_member`` (:func:`unexpected_ref`,
  :func:`raise_if_unexpected`), so it reaches the rejection ledger instead of being skipped;
* :func:`attr_str`: a text attribute, whether h5py returns it as ``str`` or ``bytes``.

The episode-level steps every format shares (build and check an Episode, frames for a writer)
are in :mod:`curation.formats.episodes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation.formats.base import EpisodeRef
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
