"""Compose camera views into one image and encode a sample's 1+K frames (ARCHITECTURE.md, "Curation stages").

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
ratio and centres the view on black.

Encoding of the composed frames ``[N, H, W, 3]``:

* ``png`` — one tall PNG (N·H rows) with a ``gwp_frames`` text chunk holding N: lossless,
  a plain PNG any viewer shows as a filmstrip, and self-describing for
  :func:`decode_sample_frames`;
* ``mp4`` — :func:`curation.video.encode_video_bytes` (lossy, much smaller at 384×320).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from isal import isal_zlib
from PIL import Image

from curation.config import VideoConfig

TOP_ROLES = ("high", "side", "low")
LEFT_ROLES = ("left_wrist", "wrist")
RIGHT_ROLES = ("right_wrist",)
PNG_FRAMES_KEY = "gwp_frames"


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


# ---- encoding a sample's frames -----------------------------------------------------


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


def encode_frames(
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
        from curation.video import encode_video_bytes

        return encode_video_bytes(frames_NHWC, fps=fps, codec=codec, crf=crf)
    raise ValueError(f"unknown frame format {fmt!r}; choose 'png' or 'mp4'")


def decode_sample_frames(data: bytes, fmt: str) -> np.ndarray:
    """Inverse of :func:`encode_frames`: uint8 ``[N, H, W, 3]``."""
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
                f"sample PNG has no {PNG_FRAMES_KEY!r} text chunk (not written by encode_frames)"
            )
        n = int(text[PNG_FRAMES_KEY])
        if n < 1 or arr.shape[0] % n:
            raise ValueError(f"sample PNG of {arr.shape[0]} rows cannot hold {n} frames")
        return arr.reshape(n, arr.shape[0] // n, arr.shape[1], 3)
    if fmt == "mp4":
        from curation.video import decode_video_bytes

        return decode_video_bytes(data)
    raise ValueError(f"unknown frame format {fmt!r}; choose 'png' or 'mp4'")


# ---- the stage ------------------------------------------------------------------------


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
    return encode_frames(frames, cfg.format, fps=fps, codec=cfg.codec, crf=cfg.crf), cfg.height, cfg.width


def make_compose_fn(cfg: VideoConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map``: a window row gains ``video``,
    ``video_format``, ``height`` and ``width`` (see :class:`curation.stages.windowing.Window`)."""
    from curation.stages.windowing import Window

    def compose_row(row: dict[str, Any]) -> dict[str, Any]:
        window = Window.from_row(row)
        video, h, w = encode_window(window, cfg, fps=window.frames_fps)
        return {**row, "video": video, "video_format": cfg.format, "height": h, "width": w}

    return compose_row
