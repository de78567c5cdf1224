"""The sample frame codec: a sample's composed 1+K frames as stored in a shard's ``video`` cell.

:func:`encode_sample_frames` is the writer (curation) and :func:`decode_sample_frames` its
exact inverse (training, reports); both sit here so that the two sides cannot drift apart.
Frames are uint8 ``[N, H, W, 3]`` RGB; the format is the row's ``video_format``:

* ``png`` — one tall PNG (N·H rows) with a ``gwp_frames`` text chunk holding N: lossless,
  a plain PNG any viewer shows as a filmstrip, and self-describing for the decoder. Each
  frame's rows are filtered and deflated on their own (:func:`png_rows`), so that the frames
  of overlapping windows are compressed once and only stacked (:func:`stack_png`);
* ``mp4`` — :func:`schemas.video.encode_video_bytes` (lossy, much smaller at 384×320).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from isal import isal_zlib
from PIL import Image

PNG_FRAMES_KEY = "gwp_frames"


@dataclass(frozen=True)
class PngRows:
    """One frame's PNG scanlines, deflated on their own (ending in a full flush), so that the
    frames of any window can be stacked into one tall PNG without compressing them again: with
    Δ = stride every composed frame is in 1 + K windows, and compression is the costly part."""

    raw: bytes  # filtered scanlines (filter byte + the filtered RGB row), for the Adler-32 of the stream
    deflated: bytes  # raw deflate segment, byte-aligned
    height: int
    width: int


PNG_FILTER_NONE, PNG_FILTER_UP = 0, 2  # a row as is; a row minus the one above it (mod 256)


def png_rows(frame_HWC: np.ndarray) -> PngRows:
    """One frame's scanlines with PNG's "Up" filter on every row: camera frames change little
    from one row to the next, so the differences deflate to about half of the plain rows'
    size (measured: 15 against 31 KB per 128² frame) in the same time, and every later step
    (Parquet's zstd, the shard files, page faults on the video column) handles half the bytes."""
    h, w, _ = frame_HWC.shape
    rows_HW3 = frame_HWC.reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), np.uint8)
    # the first row as is: in a stack of frames the row above it is another frame's, and each
    # frame's deflated rows must stand alone to be reused in every window that shows it
    filtered[0, 0], filtered[1:, 0] = PNG_FILTER_NONE, PNG_FILTER_UP
    filtered[0, 1:] = rows_HW3[0]
    np.subtract(rows_HW3[1:], rows_HW3[:-1], out=filtered[1:, 1:])  # uint8: wraps mod 256
    raw = filtered.tobytes()
    # ISA-L's deflate: a standard stream, as small as zlib's level 1 and several times faster
    # (BENCHMARKS.md, "Measurements behind the code"); compressing is most of a sample's encoding time
    comp = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    return PngRows(raw, comp.compress(raw) + comp.flush(isal_zlib.Z_FULL_FLUSH), h, w)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", isal_zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


_EMPTY_FINAL_BLOCK = b"\x03\x00"  # a final fixed-Huffman block with no symbols but end-of-block


def stack_png(frames: Sequence[PngRows]) -> bytes:
    """One tall RGB PNG of the frames (N·H rows) with a ``gwp_frames`` text chunk holding N."""
    if not frames:
        raise ValueError("stack_png needs at least one frame")
    h, w = frames[0].height, frames[0].width
    if any((f.height, f.width) != (h, w) for f in frames):
        raise ValueError("stack_png: frames of different sizes")
    adler = 1
    for f in frames:
        adler = isal_zlib.adler32(f.raw, adler)
    stream = (
        b"\x78\x01" + b"".join(f.deflated for f in frames) + _EMPTY_FINAL_BLOCK + struct.pack(">I", adler)
    )
    header = struct.pack(">IIBBBBB", w, h * len(frames), 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"tEXt", PNG_FRAMES_KEY.encode() + b"\x00" + str(len(frames)).encode()),
            _chunk(b"IDAT", stream),
            _chunk(b"IEND", b""),
        )
    )


def encode_sample_frames(
    frames_NHWC: np.ndarray,
    fmt: str = "png",
    *,
    fps: float = 1.0,
    codec: str = "h264",
    crf: int | None = None,
) -> bytes:
    """Encode ``[N, H, W, 3]`` uint8 frames as one tall PNG or an mp4."""
    if not isinstance(frames_NHWC, np.ndarray) or frames_NHWC.dtype != np.uint8:
        raise ValueError(
            f"frames must be a uint8 ndarray, got {getattr(frames_NHWC, 'dtype', type(frames_NHWC))}"
        )
    if frames_NHWC.ndim != 4 or frames_NHWC.shape[-1] != 3 or frames_NHWC.shape[0] == 0:
        raise ValueError(f"frames must be [N>0, H, W, 3], got {frames_NHWC.shape}")
    if fmt == "png":
        return stack_png([png_rows(f) for f in frames_NHWC])
    if fmt == "mp4":
        from schemas.video import encode_video_bytes

        return encode_video_bytes(frames_NHWC, fps=fps, codec=codec, crf=crf)
    raise ValueError(f"unknown frame format {fmt!r}; choose 'png' or 'mp4'")


def decode_sample_frames(data: bytes, fmt: str) -> np.ndarray:
    """Inverse of :func:`encode_sample_frames`: uint8 ``[N, H, W, 3]``."""
    if fmt == "png":
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                text = getattr(im, "text", {}) or {}
                arr = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise ValueError(f"sample frames are not a decodable PNG: {err}") from err
        if PNG_FRAMES_KEY not in text:
            raise ValueError(
                f"sample PNG has no {PNG_FRAMES_KEY!r} text chunk (not written by encode_sample_frames)"
            )
        n = int(text[PNG_FRAMES_KEY])
        if n < 1 or arr.shape[0] % n:
            raise ValueError(f"sample PNG of {arr.shape[0]} rows cannot hold {n} frames")
        return arr.reshape(n, arr.shape[0] // n, arr.shape[1], 3)
    if fmt == "mp4":
        from schemas.video import decode_video_bytes

        return decode_video_bytes(data)
    raise ValueError(f"unknown frame format {fmt!r}; choose 'png' or 'mp4'")
