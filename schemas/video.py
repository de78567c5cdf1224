"""The mp4 codec of frames: the writer and its in-memory inverse, for everyone who stores video.

* **Encoding** goes through PyAV (its wheels carry libx264, libsvtav1 and FFmpeg's mpeg4),
  always to ``yuv420p`` mp4 at a constant frame rate with frame ``i`` at ``pts = i / fps``.
  The default GOP is one keyframe per second so that a span in the middle of a long,
  concatenated mp4 (LeRobot v3.0 packs many episodes per file) is reached by one seek plus
  at most ``fps`` decoded frames. :class:`VideoWriter` streams: episodes are appended to an
  open file one batch at a time, never all held in memory. Curation writes datasets and
  ``mp4`` sample frames with it, the policy's evaluation its rollout videos.
* **Decoding in memory** (:func:`decode_video_bytes`) is the inverse for a shard's ``mp4``
  sample frames; the file readers with their decoders and caches are curation's
  (``curation/video.py``), which share :func:`nearest_frames` (a frame is the one presented
  at the time asked for, within :data:`TOLERANCE_S`, LeRobot's rule) and the display turn.
* **Errors** are :class:`~schemas.errors.LoadError` naming the file (``bad_video``,
  ``video_too_short``, ``frame_time_mismatch``).

Frames are ``uint8 [T, H, W, 3]`` RGB everywhere (``frames_THWC``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from schemas.errors import LoadError

# SVT-AV1 prints its banner through its own logger unless told otherwise (1 = errors only).
os.environ.setdefault("SVT_LOG", "1")

CODECS = {"h264": "libx264", "av1": "libsvtav1", "mpeg4": "mpeg4"}
DEFAULT_CRF = {"h264": 20, "av1": 30}
_SVT_PRESET = "8"  # SVT-AV1's speed/quality middle ground
# How far a frame's pts may be from the time asked for: LeRobot's default ``tolerance_s``.
# Data timestamps are often float32, whose rounding grows with t: :func:`tolerance_at` adds it.
TOLERANCE_S = 1e-4


def check_frames(frames_THWC: np.ndarray) -> None:
    if not isinstance(frames_THWC, np.ndarray) or frames_THWC.dtype != np.uint8:
        raise ValueError(
            f"frames must be a uint8 ndarray, got {getattr(frames_THWC, 'dtype', type(frames_THWC))}"
        )
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.shape[0] == 0:
        raise ValueError(f"frames must be [T>0, H, W, 3], got {frames_THWC.shape}")
    h, w = frames_THWC.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even height and width, got {h}x{w}")


class VideoWriter:
    """Streaming mp4 encoder: ``write`` batches of frames, then ``close``.

    Frame ``i`` (counted over all writes) gets ``pts = i / fps``, so a span of frames written
    by one call sits at ``[first / fps, (first + n) / fps)`` in the file — what LeRobot v3
    records as ``from_timestamp`` / ``to_timestamp`` when it packs episodes in one file.
    ``target`` is a path or a writable binary file object.
    """

    def __init__(
        self,
        target: str | Path | io.BytesIO,
        fps: float,
        codec: str = "h264",
        crf: int | None = None,
        gop: int | None = None,
        pix_fmt: str = "yuv420p",
    ):
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps, self.codec, self.crf, self.gop, self.pix_fmt = float(fps), codec, crf, gop, pix_fmt
        self.num_frames = 0
        self.bytes_muxed = 0  # compressed bytes handed to the muxer so far (encoders lag by their lookahead)
        self._target = str(target) if isinstance(target, (str, Path)) else target
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._size: tuple[int, int] | None = None

    def _open(self, h: int, w: int) -> None:
        self._container = av.open(self._target, mode="w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(CODECS[self.codec], rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, self.pix_fmt
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.gop_size = int(self.gop) if self.gop else max(1, round(self.fps))
        options: dict[str, str] = {}
        if self.codec == "h264":
            options["crf"] = str(DEFAULT_CRF["h264"] if self.crf is None else self.crf)
        elif self.codec == "av1":
            options["crf"] = str(DEFAULT_CRF["av1"] if self.crf is None else self.crf)
            options["preset"] = _SVT_PRESET
        else:  # mpeg4 has no CRF: a generous bit rate, scaled down by ``crf`` if given (higher = worse)
            bits_per_pixel = 2.0 / (1 + (self.crf or 0) / 10)
            stream.bit_rate = int(max(2e5, w * h * self.fps * bits_per_pixel))
        stream.options = options
        self._stream, self._size = stream, (h, w)

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes_muxed += packet.size
            self._container.mux(packet)

    def write(self, frames_THWC: np.ndarray) -> tuple[int, int]:
        """Encode frames; returns their ``[first, stop)`` frame numbers in the file."""
        check_frames(frames_THWC)
        t, h, w, _ = frames_THWC.shape
        if self._container is None:
            self._open(h, w)
        elif self._size != (h, w):
            raise ValueError(f"frame size {h}x{w} differs from the stream's {self._size[0]}x{self._size[1]}")
        first = self.num_frames
        stream = self._stream
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames_THWC[i]), format="rgb24")
            frame.pts = first + i
            frame.time_base = stream.codec_context.time_base
            self._mux(stream.encode(frame))
        self.num_frames += t
        return first, self.num_frames

    def close(self) -> None:
        if self._container is None:
            raise ValueError("VideoWriter closed before any frame was written")
        self._mux(self._stream.encode())
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._container is not None:
            if exc_type is None:
                self.close()
            else:
                self._container.close()
                self._container = None


def encode_video_bytes(
    frames_THWC: np.ndarray, fps: float, codec: str = "h264", crf: int | None = None
) -> bytes:
    """An mp4 of ``frames_THWC`` in memory (shard rows, rollout videos); one keyframe per second."""
    check_frames(frames_THWC)
    buf = io.BytesIO()
    with VideoWriter(buf, fps, codec, crf) as writer:
        writer.write(frames_THWC)
    return buf.getvalue()


def decode_video_bytes(data: bytes, times: Sequence[float] | None = None) -> np.ndarray:
    """Frames of an in-memory video as displayed, uint8 [N, H, W, 3]: all of them in
    presentation order, or with ``times`` (s from the first frame) the one presented at each."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            start, tb = stream.start_time or 0, float(stream.time_base)
            decoded = [(f.pts, f.rotation, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    except (av.error.FFmpegError, ValueError, IndexError) as err:
        raise LoadError("bad_video", f"cannot decode in-memory video: {err}", "<bytes>") from err
    if not decoded:
        raise LoadError("bad_video", "in-memory video has no frames", "<bytes>")
    decoded.sort(key=lambda d: -1 if d[0] is None else d[0])  # stable: frames without a pts keep their place
    frames = rotate_frames(np.stack([d[2] for d in decoded]), rotation_of(decoded[0][1]))
    if times is None:
        return frames
    if any(d[0] is None for d in decoded):
        raise LoadError("bad_video", "in-memory video has frames without a presentation time", "<bytes>")
    have = np.array([(d[0] - start) * tb for d in decoded], np.float64)
    return frames[nearest_frames(have, times, TOLERANCE_S, "<bytes>")]


def rotation_of(degrees: float | None) -> int:
    """PyAV's ``frame.rotation`` (counter-clockwise degrees, -180..180) as 0/90/180/270."""
    return round((degrees or 0) / 90.0) % 4 * 90


def rotate_frames(frames_THWC: np.ndarray, rotation: int) -> np.ndarray:
    """The displayed picture: ``rotation`` degrees counter-clockwise (np.rot90 turns that way)."""
    k = rotation // 90 % 4
    return frames_THWC if k == 0 else np.ascontiguousarray(np.rot90(frames_THWC, k, axes=(1, 2)))


def tolerance_at(times: np.ndarray, tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """The tolerance for each wanted time: ``tolerance_s`` plus float32 rounding at that time
    (LeRobot stores timestamps as float32: about 2e-4 s off at one hour)."""
    return tolerance_s + np.abs(times) * float(np.finfo(np.float32).eps)


def nearest_frames(have: np.ndarray, times: Sequence[float], tolerance_s: float, path) -> np.ndarray:
    """For each wanted time, the index of the nearest of the ascending frame times ``have``;
    ``video_too_short`` past the last frame, ``frame_time_mismatch`` beyond the tolerance."""
    want = np.asarray(times, np.float64).reshape(-1)
    if want.size == 0:
        return np.zeros(0, np.int64)
    tol = tolerance_at(want, tolerance_s)
    right = np.clip(np.searchsorted(have, want), 0, have.size - 1)
    left = np.clip(right - 1, 0, have.size - 1)
    nearest = np.where(np.abs(have[left] - want) <= np.abs(have[right] - want), left, right)
    bad = np.flatnonzero(np.abs(have[nearest] - want) > tol)
    if bad.size:
        k = int(bad[0])
        detail = (
            f"no frame within {tolerance_s:g} s of {bad.size} wanted time(s); first: step {k} wants "
            f"t={want[k]:.6f} s, nearest frame pts={have[nearest[k]]:.6f} s"
        )
        if want[k] > have[-1] + tol[k]:
            raise LoadError(
                "video_too_short",
                f"{detail} (the last of its {have.size} frames is at {have[-1]:.6f} s)",
                path,
            )
        raise LoadError("frame_time_mismatch", detail, path)
    return nearest.astype(np.int64)
