"""Decode the frames a :class:`~schemas.FrameRef` points at.

Readers never decode video; they hand out references. This module turns one reference
(plus optional episode-relative frame indices) into ``uint8 [N, H, W, 3]`` RGB:

* ``video``   — the frames of an mp4 presented at the steps' times (:func:`curation.video.read_video`,
  which seeks): ``ref.times``, or the grid ``(start + i) / fps``, each matched to a frame's pts;
* ``hdf5``    — rows ``[start, stop)`` of the dataset ``key`` in an HDF5 file;
* ``encoded`` — one PNG/JPEG per frame, decoded with PIL;
* ``inline``  — a slice of the array carried in the reference.

``indices`` are always relative to the episode (0 = the reference's first frame); an index
outside ``[0, num_frames)`` is a caller bug and raises ``IndexError``. Problems with the data
itself raise :class:`~curation.formats.base.LoadError` naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from curation.formats.base import LoadError
from curation.video import read_video
from schemas import FrameRef


def _relative_indices(ref: FrameRef, indices: Sequence[int] | None) -> np.ndarray:
    n = ref.num_frames
    if indices is None:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(list(indices), dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(
            f"frame indices {idx.min()}..{idx.max()} outside [0, {n}) of {ref.kind} ref {ref.path!r}"
        )
    return idx


def _check_hwc(frames: np.ndarray, where: str) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise LoadError("bad_frames", f"expected frames [N, H, W, 3], got {frames.shape}", where)
    if frames.dtype != np.uint8:
        if np.issubdtype(frames.dtype, np.floating) and frames.size and float(frames.max()) <= 1.0:
            frames = frames * 255.0  # float images in [0, 1]
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return frames


def _decode_hdf5(ref: FrameRef, idx: np.ndarray) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(ref.path, "r")
    except FileNotFoundError as err:
        raise LoadError("missing_file", "HDF5 file does not exist", ref.path) from err
    except OSError as err:
        raise LoadError("bad_file", f"cannot open as HDF5: {err}", ref.path) from err
    with f:
        if ref.key not in f:
            raise LoadError("missing_key", f"no dataset {ref.key!r}", ref.path)
        ds = f[ref.key]
        if ds.shape[0] < ref.stop:
            raise LoadError("video_too_short", f"{ref.key} has {ds.shape[0]} rows, need {ref.stop}", ref.path)
        rows = idx + ref.start
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        if uniq.size == ref.stop - ref.start:
            data = ds[ref.start : ref.stop]
        elif uniq.size and uniq[-1] - uniq[0] + 1 == uniq.size:
            data = ds[int(uniq[0]) : int(uniq[-1]) + 1]
        else:
            data = ds[uniq.tolist()] if uniq.size else ds[0:0]
    return _check_hwc(np.asarray(data), ref.path)[inverse.reshape(-1)]


def _decode_encoded(ref: FrameRef, idx: np.ndarray) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = []
    for i in idx:
        try:
            with Image.open(io.BytesIO(ref.encoded[int(i)])) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (UnidentifiedImageError, OSError) as err:
            raise LoadError(
                "bad_image", f"frame {int(i)} is not a decodable image: {err}", ref.path or "<encoded>"
            ) from err
    if not out:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise LoadError("bad_image", f"frames differ in size: {sorted(shapes)}", ref.path or "<encoded>")
    return np.stack(out)


def video_times(ref: FrameRef) -> np.ndarray:
    """float64 [T]: when each step's frame of a video ref is presented (s from the file's first frame)."""
    if ref.times:
        return np.asarray(ref.times, np.float64)
    if not ref.fps > 0:
        raise LoadError("bad_frames", "video reference without times or a positive fps", ref.path)
    return np.arange(ref.start, ref.stop, dtype=np.float64) / ref.fps


def decode_frames(ref: FrameRef, indices: Sequence[int] | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] frames of ``ref`` (all of them, or the episode-relative ``indices``)."""
    idx = _relative_indices(ref, indices)
    if ref.kind == "video":
        return read_video(ref.path, times=video_times(ref)[idx])
    if ref.kind == "hdf5":
        return _decode_hdf5(ref, idx)
    if ref.kind == "encoded":
        return _decode_encoded(ref, idx)
    if ref.kind == "inline":
        if ref.array is None:
            raise LoadError("bad_frames", "inline frame reference without an array", ref.path or "<inline>")
        return _check_hwc(ref.array[idx], ref.path or "<inline>")
    raise ValueError(f"unknown FrameRef kind {ref.kind!r}")
