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

**Pixel formats.** Whatever a source stores, the result is 8-bit RGB (:func:`to_rgb8`), or a
``LoadError`` naming dtype, shape and file; nothing is clipped silently:

* ``uint8`` as is; ``uint16`` scaled by 1/257 with rounding (65535 -> 255, 257·v -> v);
* float in [0, 1] -> ×255, rounded; float whose every value is a whole number in [0, 255]
  (a uint8 image cast to float) as is; any other float range (or NaN/inf) -> ``bad_pixel_range``
  (the range is judged on the frames decoded, so a [0, 255] source whose frames are all 0/1
  would read as [0, 1]: such a frame is black either way);
* signed ints, bool and other dtypes -> ``bad_pixel_dtype`` (their range has no convention);
* a range the source declares (``FrameRef.pixel_range``, from the mapping's
  ``extra.pixel_range``; e.g. ``(0, 4095)`` for a 12-bit camera) overrides all of the above
  for any integer or float dtype: ``lo..hi`` is mapped linearly onto 0..255, rounded, and a
  value outside it is ``bad_pixel_range``;
* grayscale ``[N, H, W]`` or ``[N, H, W, 1]`` -> the gray replicated to 3 channels;
* RGBA ``[N, H, W, 4]`` -> alpha dropped, not composited: camera frames with alpha are
  opaque in practice, and compositing a transparent pixel over an arbitrary background would
  invent a colour; any other channel count -> ``bad_frames``;
* ``FrameRef.channel_order == "bgr"`` (set by the readers from the source mapping) -> channels
  reversed (BGRA: the colour channels reversed, alpha dropped).

Encoded images go through PIL: modes RGB/L/LA/RGBA/P/1/CMYK/YCbCr are converted to RGB the
same way, 16-bit ``I;16*`` / ``I`` (PNG 16-bit gray) by the uint16 rule, ``F`` by the float rule.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from curation.video import read_video
from schemas import FrameRef
from schemas.errors import LoadError


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


def _declared_range_to_uint8(frames: np.ndarray, where: str, lo: float, hi: float) -> np.ndarray:
    if not (np.issubdtype(frames.dtype, np.integer) or np.issubdtype(frames.dtype, np.floating)):
        raise LoadError("bad_pixel_dtype", f"frames {frames.shape} are {frames.dtype}, not numbers", where)
    if not frames.size:
        return frames.astype(np.uint8)
    values = frames.astype(np.float64)
    vmin, vmax = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmin < lo or vmax > hi:
        raise LoadError(
            "bad_pixel_range",
            f"{frames.dtype} frames {frames.shape} span [{vmin:.6g}, {vmax:.6g}], outside the declared "
            f"pixel_range [{lo:.6g}, {hi:.6g}]",
            where,
        )
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _pixel_values_to_uint8(frames: np.ndarray, where: str, pixel_range: tuple[float, ...] = ()) -> np.ndarray:
    """Any supported pixel dtype -> uint8 of the same shape; LoadError for the others."""
    if pixel_range:
        return _declared_range_to_uint8(frames, where, *pixel_range)
    dtype = frames.dtype
    if dtype == np.uint8:
        return frames
    if dtype == np.uint16:
        return ((frames.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if not frames.size:
            return frames.astype(np.uint8)
        lo, hi = float(np.min(frames)), float(np.max(frames))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise LoadError("bad_pixel_range", f"{dtype} frames {frames.shape} hold NaN or inf", where)
        if lo >= 0.0 and hi <= 1.0:
            # float32 at least: float16 has too few bits near 255 to round v/255·255 back to v
            return np.rint(frames.astype(np.promote_types(dtype, np.float32)) * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0 and bool(np.all(frames == np.rint(frames))):
            return frames.astype(np.uint8)
        raise LoadError(
            "bad_pixel_range",
            f"{dtype} frames {frames.shape} span [{lo:.4g}, {hi:.4g}]: neither [0, 1] nor whole numbers "
            "in [0, 255]",
            where,
        )
    raise LoadError(
        "bad_pixel_dtype",
        f"frames {frames.shape} are {dtype}; supported: uint8, uint16, float in [0, 1] or [0, 255]",
        where,
    )


def to_rgb8(
    frames: np.ndarray, where: str, channel_order: str = "rgb", pixel_range: tuple[float, ...] = ()
) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` RGB from gray ``[N, H, W(, 1)]``, RGB(A) or BGR(A) frames (module docstring)."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise LoadError(
            "bad_frames",
            f"expected frames [N, H, W] or [N, H, W, 1|3|4], got {frames.shape} ({frames.dtype})",
            where,
        )
    frames = _pixel_values_to_uint8(frames, where, pixel_range)
    channels = frames.shape[-1]
    if channels == 1:
        return np.repeat(frames, 3, axis=-1)
    if channel_order == "bgr":
        return np.ascontiguousarray(frames[..., 2::-1])  # B, G, R(, A) -> R, G, B
    return frames if channels == 3 else np.ascontiguousarray(frames[..., :3])


def _check_hwc(frames: np.ndarray, where: str, ref: FrameRef | None = None) -> np.ndarray:
    if ref is None:
        return to_rgb8(frames, where)
    return to_rgb8(frames, where, ref.channel_order, ref.pixel_range)


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
    try:
        frames = _check_hwc(np.asarray(data), ref.path, ref)
    except LoadError as err:
        raise LoadError(err.reason, f"dataset {ref.key}: {err.detail}", ref.path) from err
    return frames[inverse.reshape(-1)]


# PIL modes whose np.asarray is gray / gray+alpha / colour(+alpha) in a dtype to_rgb8 knows;
# the others it has no array form for are converted to RGB by PIL itself.
_ARRAY_MODES = {"RGB", "RGBA", "L", "LA", "I;16", "I;16L", "I;16B", "I", "F"}
_PIL_TO_RGB = {"P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa", "RGBX"}


def _image_array(im, where: str, declared_range: bool) -> np.ndarray:
    """One PIL image as an array to_rgb8 accepts: [H, W] or [H, W, C]."""
    mode = im.mode
    if mode in _PIL_TO_RGB:
        return np.asarray(im.convert("RGBA" if mode in ("PA", "La", "RGBa") else "RGB"))
    if mode not in _ARRAY_MODES:
        raise LoadError("bad_pixel_dtype", f"unsupported image mode {mode!r}", where)
    arr = np.asarray(im)
    if mode == "LA":
        arr = arr[..., :1]  # gray + alpha: keep the gray (alpha dropped, as for RGBA)
    elif mode == "I" and not declared_range:  # PNG 16-bit gray arrives as int32: must fit uint16
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFF):
            raise LoadError(
                "bad_pixel_range",
                f"mode 'I' values span [{int(arr.min())}, {int(arr.max())}], not 16-bit",
                where,
            )
        arr = arr.astype(np.uint16)
    elif mode.startswith("I;16"):
        arr = arr.astype(np.uint16)  # I;16B arrives big-endian
    return arr


def _decode_encoded(ref: FrameRef, idx: np.ndarray) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    where = ref.path or "<encoded>"
    out = []
    for i in idx:
        try:
            with Image.open(io.BytesIO(ref.encoded[int(i)])) as im:
                arr = _image_array(im, where, bool(ref.pixel_range))
            out.append(_check_hwc(arr[None], where, ref)[0])
        except (UnidentifiedImageError, OSError) as err:
            raise LoadError("bad_image", f"frame {int(i)} is not a decodable image: {err}", where) from err
        except LoadError as err:
            raise LoadError(
                err.reason, f"frame {int(i)} of {ref.key or 'image'}: {err.detail}", where
            ) from err
    if not out:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise LoadError("bad_image", f"frames differ in size: {sorted(shapes)}", where)
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
