"""Video files: probe and decode (the mp4 writer and the in-memory codec are :mod:`schemas.video`).

Design:

* **Encoding** is :mod:`schemas.video` (the writer and its in-memory inverse live together,
  below curation, training and evaluation alike).
* **Decoding** uses decord for h264 / mpeg4 / vp9 when most of a file is wanted (open,
  ``get_batch``, close), and otherwise a PyAV cursor kept open per file that decodes on from
  where the last span ended (consecutive episodes of a packed file) and maps each frame to its
  index by its timestamp, seeking only backwards or across long gaps; PyAV also decodes AV1
  (decord's bundled FFmpeg has none; PyAV brings dav1d) and is the fallback when decord
  refuses a file. Why not keep decord readers open: see ``_CURSORS``.
* **Time, not position.** A frame is the one whose presentation time (pts, in seconds from
  the stream's first frame) is the time asked for, within :data:`TOLERANCE_S` (LeRobot's
  rule: a step's frame is at its data ``timestamp``, plus ``from_timestamp`` for a span of a
  packed file). :func:`frame_times` lists every frame's pts by demuxing the file once per
  file version (no decoding); :func:`match_times` maps wanted times to frame numbers in
  presentation order and raises ``frame_time_mismatch`` when no frame is close enough. Both
  decoders then read those frame numbers: decord only where its own per-frame timestamps
  agree with that list (its frame numbering is its own; on some files it fails outright),
  the PyAV cursor by looking each decoded frame's pts up in the list. A variable-frame-rate
  file therefore gives the right frames in every path, and a header fps that disagrees with
  the frames does not move them. Readers run :func:`check_frame_times` at load, so an
  episode with a step that has no frame is rejected whole, before any window of it is
  decoded; that costs one demux per video file and process (its bytes read, nothing decoded).
* **Rotation.** A display matrix (mp4 ``tkhd`` / FFmpeg side data) says how the decoded
  picture is shown; every path returns the *displayed* picture, turned by ``np.rot90`` with
  the angle :func:`probe_video` read once per file, and the probe's width/height are the
  displayed ones. decord turns 90/270 by itself but fails on 180, so rotated files always
  take the PyAV cursor: one implementation of the turn.
* **Errors** are :class:`~curation.formats.base.LoadError` naming the file:
  ``missing_video`` (no such file), ``bad_video`` (not a video, truncated, undecodable),
  ``video_too_short`` (asked for frames past the end), ``frame_time_mismatch`` (no frame at
  a wanted time).

Frames are ``uint8 [T, H, W, 3]`` RGB everywhere (``frames_THWC``).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from curation.formats.base import file_version
from schemas.errors import LoadError
from schemas.video import (
    TOLERANCE_S,
    VideoWriter,
    check_frames,
    nearest_frames,
    rotate_frames,
    rotation_of,
    tolerance_at,
)

# Codec names as FFmpeg reports them on decode -> our short names.
_DECODED_NAMES = {
    "h264": "h264",
    "av1": "av1",
    "libdav1d": "av1",
    "mpeg4": "mpeg4",
    "vp9": "vp9",
    "hevc": "hevc",
}
_DECORD_CODECS = ("h264", "mpeg4", "vp9")
_SEEK_GAP = 48  # re-seek instead of decoding through a gap longer than this many frames


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    num_frames: int
    fps: float
    width: int  # as displayed (after the rotation)
    height: int
    duration_s: float
    rotation: int = 0  # degrees counter-clockwise that turn the decoded picture upright: 0/90/180/270


def encode_video(
    frames_THWC: np.ndarray,
    path: str | Path,
    fps: float,
    codec: str = "h264",
    crf: int | None = None,
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
) -> None:
    """Write ``frames_THWC`` (uint8 [T, H, W, 3]) to an mp4 at ``path``.

    ``gop=None`` puts a keyframe every second (``round(fps)`` frames).
    """
    check_frames(frames_THWC)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with VideoWriter(tmp, fps, codec, crf, gop, pix_fmt) as writer:
        writer.write(frames_THWC)
    tmp.replace(path)  # readers never see half-written files


# ---- probe ---------------------------------------------------------------------------


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise LoadError("missing_video", "file does not exist", path)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise LoadError("bad_video", f"cannot open as a video: {err}", path) from err
    if not container.streams.video:
        container.close()
        raise LoadError("bad_video", "has no video stream", path)
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | Path) -> VideoInfo:
    """Codec, frame count, fps and size from the container header (no decoding); remembered
    per file version (path, size, mtime): the episodes packed in one long mp4 (LeRobot v3.0)
    each probe it, and opening it once per episode adds up (BENCHMARKS.md, "Measurements behind the code")."""
    return _per_file_version(Path(path), _probe, _probe_cached)


def _per_file_version(path: Path, read, read_cached):
    """``read_cached(*file_version(path))``: remembered until the file is rewritten; a file that
    cannot be stat'ed is read uncached, so that the reader names the problem."""
    try:
        version = file_version(path)
    except OSError:
        return read(path)
    return read_cached(*version)


@functools.lru_cache(maxsize=64)
def _probe_cached(path: str, size: int, mtime_ns: int) -> VideoInfo:
    return _probe(Path(path))


def _probe(path: Path) -> VideoInfo:
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        n = int(stream.frames)
        if n <= 0:  # header without a frame count: count packets (demux only, no decoding)
            n = sum(1 for p in container.demux(stream) if p.size)
            container.seek(0)
        duration = float(stream.duration * stream.time_base) if stream.duration else (n / fps if fps else 0.0)
        name = stream.codec_context.name
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        rotation = _first_frame_rotation(container, stream)
        if rotation in (90, 270):
            width, height = height, width
        info = VideoInfo(
            codec=_DECODED_NAMES.get(name, name),
            num_frames=n,
            fps=fps,
            width=width,
            height=height,
            duration_s=duration,
            rotation=rotation,
        )
    if info.num_frames <= 0 or info.width <= 0 or info.fps <= 0:
        raise LoadError("bad_video", f"empty or unreadable video stream ({info})", path)
    return info


def _first_frame_rotation(container: av.container.InputContainer, stream) -> int:
    """The display matrix's rotation. PyAV shows the stream's side data only on decoded frames,
    so one frame is decoded (the probe is remembered per file version: once per file)."""
    try:
        for frame in container.decode(stream):
            return rotation_of(frame.rotation)
    except (av.error.FFmpegError, ValueError):
        pass  # an undecodable file: the decoders name the problem when frames are asked for
    return 0


def frame_times(path: str | Path) -> np.ndarray:
    """float64 [N]: every frame's presentation time in seconds from the stream's first frame,
    ascending (frame ``k`` in presentation order is at ``frame_times(path)[k]``).

    From the packets' pts (demux, no decoding), remembered per file version; a file whose data
    breaks off lists the frames before the break."""
    return _per_file_version(Path(path), _frame_times, _frame_times_cached)


@functools.lru_cache(maxsize=16)
def _frame_times_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    return _frame_times(Path(path))


def _frame_times(path: Path) -> np.ndarray:
    pts = []
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
        except av.error.FFmpegError:
            pass  # data cut short: the frames before the cut are all there is
        start = stream.start_time
        tb = stream.time_base
    if not pts:
        raise LoadError("bad_video", "no frame with a presentation time", path)
    pts_arr = np.sort(np.asarray(pts, np.int64))
    times = (pts_arr - (start or 0)).astype(np.float64) * float(tb)
    times.setflags(write=False)
    return times


def match_times(path: str | Path, times: Sequence[float], tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """int64 [N]: for each wanted time (s from the stream's first frame), the number of the frame
    (in presentation order) whose pts is nearest to it.

    Raises ``video_too_short`` when a time lies past the last frame or the file's data ends
    before the frames its header promises, and ``frame_time_mismatch`` (detail: the wanted
    time and the nearest pts) when the nearest frame is farther than the tolerance."""
    path = Path(path)
    have = frame_times(path)
    try:
        return nearest_frames(have, times, tolerance_s, path)
    except LoadError as err:
        promised = probe_video(path).num_frames
        if err.reason == "frame_time_mismatch" and have.size < promised:
            # the data breaks off (B-frames reorder: the gap can be mid-list)
            raise LoadError(
                "video_too_short", f"{err.detail}; its data ends after {have.size} of {promised} frames", path
            ) from None
        raise


# ---- decode --------------------------------------------------------------------------

# Two decoders, each where it is faster and costs nothing once done:
#
# * decord (open, ``get_batch``, close) for h264 / mpeg4 / vp9 when the wanted frames are
#   most of the file (a per-episode mp4): its decode + RGB conversion is faster than PyAV's. A
#   decord reader is never kept: an idle ``VideoReader`` keeps a thread spinning at 100 % of a
#   core, which on a Ray node starves the other workers (BENCHMARKS.md,
#   "Measurements behind the code"). Re-opening a long file is no answer either: decord indexes
#   the whole file on open.
# * A PyAV cursor (:class:`_Cursor`) for a span of a longer file (LeRobot v3.0 packs many
#   episodes per file; one Ray task reads consecutive episodes): it stays open per process and
#   decodes on from where the last span ended, seeking only backwards or across a gap, with no
#   thread of its own. Also AV1 (decord's FFmpeg has no AV1 decoder) and the fallback when
#   decord refuses a file.
_CURSORS: OrderedDict[tuple[str, int, int], _Cursor] = OrderedDict()
_CURSORS_LOCK = threading.Lock()
_CURSORS_MAX = 4


class _Cursor:
    """An open PyAV container decoding one video front to back (used by one caller at a time;
    after a failed read its position is unknown and :func:`_read_cursor` closes it). Frames are
    numbered by looking their pts up in :func:`frame_times`, never by counting or by fps."""

    def __init__(self, path: Path):
        from av.video.reformatter import VideoReformatter

        self.path = path
        self.times = frame_times(path)
        self.container = _open(path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"  # one Ray CPU per task: no decoder threads of its own
        self.tb = float(self.stream.time_base)
        self.start = self.stream.start_time or 0  # the same origin as frame_times
        self.reformatter = VideoReformatter()  # keeps its swscale context (rebuilding it per frame is slower)
        self.frames = None  # decode iterator
        self.next_index = -1  # index of the frame the iterator yields next; -1 = unknown

    def _seek(self, index: int) -> None:
        # the keyframe at or before frame ``index``: aim half way back to the frame before it
        # (float safety), or at the very start for frame 0
        t = 0.5 * (self.times[index - 1] + self.times[index]) if index > 0 else self.times[0] - 1.0
        ts = self.start + int(np.floor(t / self.tb))
        self.container.seek(ts, stream=self.stream, backward=True, any_frame=False)
        self.frames, self.next_index = self.container.decode(self.stream), -1

    def _index_of(self, frame: av.VideoFrame) -> int:
        t = float(frame.pts - self.start) * self.tb
        k = int(np.searchsorted(self.times, t))
        if k >= self.times.size or self.times[k] != t:
            raise LoadError("bad_video", f"decoded a frame at {t:.6f} s that no packet announced", self.path)
        return k

    def read(self, wanted: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] (as decoded, not turned) of the sorted, unique frame numbers ``wanted``."""
        out = []
        for want in (int(i) for i in wanted):
            if self.frames is None or not (0 <= self.next_index <= want <= self.next_index + _SEEK_GAP):
                self._seek(want)
            while True:
                try:
                    frame = next(self.frames, None)
                except av.error.InvalidDataError as err:  # e.g. a file cut mid-packet
                    raise LoadError(
                        "video_too_short", f"decoding breaks off before frame {want} ({err})", self.path
                    ) from err
                if frame is None:
                    raise LoadError("video_too_short", f"frame {want} not found while decoding", self.path)
                if frame.pts is None:
                    continue
                idx = self._index_of(frame)
                self.next_index = idx + 1
                if idx == want:
                    out.append(self.reformatter.reformat(frame, format="rgb24").to_ndarray())
                    break
                if idx > want:
                    raise LoadError("bad_video", f"frame {want} missing from the stream", self.path)
        return np.stack(out)

    def close(self) -> None:
        self.frames = None
        self.container.close()


def _read_cursor(path: Path, wanted: np.ndarray) -> np.ndarray:
    key = file_version(path)
    with _CURSORS_LOCK:
        cursor = _CURSORS.pop(key, None)  # taken out while in use: one reader at a time
    if cursor is None:
        cursor = _Cursor(path)
    try:
        frames = cursor.read(wanted)
    except BaseException:
        cursor.close()  # its position is unknown after a failure: not kept
        raise
    with _CURSORS_LOCK:
        _CURSORS[key] = cursor
        while len(_CURSORS) > _CURSORS_MAX:
            _CURSORS.popitem(last=False)[1].close()
    return frames


def close_cursors() -> None:
    """Close this process's open video cursors (tests, benchmarks, long-lived workers)."""
    with _CURSORS_LOCK:
        while _CURSORS:
            _CURSORS.popitem()[1].close()


def _read_decord(path: Path, wanted: np.ndarray) -> np.ndarray | None:
    """decord's frames ``wanted``, or None where its frame count or its timestamps of those
    frames differ from :func:`frame_times` (then frame ``k`` may not be the same frame)."""
    import decord

    times = frame_times(path)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    try:
        if len(reader) != times.size:
            return None
        theirs = reader.get_frame_timestamp(wanted.tolist())[:, 0]  # float32 seconds
        if np.any(np.abs(theirs - times[wanted]) > tolerance_at(times[wanted])):
            return None
        return reader.get_batch(wanted.tolist()).asnumpy()
    finally:
        del reader  # its decode thread spins while it lives


def read_video(
    path: str | Path,
    start: int = 0,
    stop: int | None = None,
    indices: Sequence[int] | None = None,
    times: Sequence[float] | None = None,
) -> np.ndarray:
    """Frames of ``path`` as displayed (rotation applied), uint8 [N, H, W, 3].

    ``times`` (seconds from the stream's first frame, any order) picks each frame by its
    presentation time (:func:`match_times`); else ``indices`` (frame numbers in presentation
    order, any order, repeats allowed); else the span ``[start, stop)`` (``stop=None``: the end).
    """
    path = Path(path)
    info = probe_video(path)
    if times is not None:
        want = match_times(path, times)
    elif indices is None:
        stop = info.num_frames if stop is None else stop
        if start < 0 or stop < start:
            raise ValueError(f"{path}: bad span [{start}, {stop})")
        want = np.arange(start, stop, dtype=np.int64)
    else:
        want = np.asarray(list(indices), dtype=np.int64)
    if want.size == 0:
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    if want.min() < 0:
        raise ValueError(f"{path}: negative frame index {int(want.min())}")
    have = min(info.num_frames, frame_times(path).size)  # a cut file has fewer than its header says
    if want.max() >= have:
        raise LoadError(
            "video_too_short", f"frame {int(want.max())} requested but the video has {have}", path
        )
    uniq, inverse = np.unique(want, return_inverse=True)
    frames = None
    # decord leaves a 180-degree turn undone (and fails on it): rotated files take the cursor
    if info.codec in _DECORD_CODECS and info.rotation == 0 and 2 * uniq.size >= info.num_frames:
        try:
            frames = _read_decord(path, uniq)
        except Exception:  # decord raises its own DECORDError / RuntimeError: fall back to PyAV
            frames = None
    if frames is None:
        try:
            frames = _read_cursor(path, uniq)
        except LoadError:
            raise
        except (av.error.FFmpegError, ValueError, RuntimeError) as err:
            raise LoadError("bad_video", f"decoding failed: {err}", path) from err
    frames = rotate_frames(frames, info.rotation)
    if frames.shape[0] != uniq.size or frames.shape[1:] != (info.height, info.width, 3):
        raise LoadError("bad_video", f"decoder returned {frames.shape} for {uniq.size} frames", path)
    return frames[inverse.reshape(-1)]


# ---- timing checks for readers -------------------------------------------------------------


def check_timestamps(timestamps: np.ndarray, path: str | Path, episode: str) -> None:
    """A step table's timestamps must be finite and strictly increasing: a step that goes back
    in time or repeats one has no frame of its own (``bad_timestamps``)."""
    ts = np.asarray(timestamps, np.float64).reshape(-1)
    if not np.isfinite(ts).all():
        step = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise LoadError("bad_timestamps", f"timestamp of step {step} is {ts[step]}", path, episode)
    steps = np.diff(ts)
    if (steps <= 0).any():
        k = int(np.flatnonzero(steps <= 0)[0]) + 1
        how = "repeats" if steps[k - 1] == 0 else "goes backwards"
        raise LoadError(
            "bad_timestamps",
            f"timestamp {how} at step {k}: {ts[k]:.6f} s after {ts[k - 1]:.6f} s",
            path,
            episode,
        )


def check_frame_times(path: str | Path, times: np.ndarray, declared_fps: float, episode: str) -> np.ndarray:
    """Every step's time has its frame in the video (header and packets only, no decoding); returns
    the times to read the frames at.

    A header frame rate that disagrees with ``declared_fps`` is accepted when the frames are
    where the steps' times say (frames are chosen by time, so the header does not move them:
    a variable-rate file is fine). A declared rate that only rounds the file's exact one (29.97
    for NTSC's 30000/1001) puts steps computed on it off the frames by a drift that grows with t
    (1e-4 s after ~3,000 frames): those times are read on the file's clock instead (scaled by the
    ratio of the rates). Otherwise a step without its frame is ``fps_mismatch`` if the rates differ
    (the likely cause) and ``frame_time_mismatch`` if they agree."""
    times = np.asarray(times, np.float64)
    try:
        match_times(path, times)
        return times
    except LoadError as err:
        if err.reason != "frame_time_mismatch":
            raise LoadError(err.reason, err.detail, err.path, episode) from None
        fps = probe_video(path).fps
        if fps != declared_fps and abs(fps - declared_fps) <= _ROUNDED_RATE * declared_fps:
            scaled = times * (declared_fps / fps)
            try:
                match_times(path, scaled)
                return scaled
            except LoadError:
                pass
        reason, detail = err.reason, err.detail
        if abs(fps - declared_fps) > 1e-3 * declared_fps:
            reason = "fps_mismatch"
            detail = f"declared {declared_fps:g} fps, the video's header says {fps:g} fps; {detail}"
        raise LoadError(reason, detail, err.path, episode) from None


# A declared fps this close to the file's (relative) is taken as a rounding of it (29.97 vs 30000/1001).
_ROUNDED_RATE = 1e-4


def compact_times(times: np.ndarray, start: int, fps: float) -> tuple[float, ...]:
    """``FrameRef.times`` for these step times: () where they are the grid ``(start + i) / fps``
    (to float32 rounding), so constant-rate references carry no per-step list."""
    times = np.asarray(times, np.float64)
    grid = np.arange(start, start + times.size, dtype=np.float64) / fps
    if times.size and np.all(np.abs(times - grid) <= tolerance_at(grid, 1e-6)):
        return ()
    return tuple(times.tolist())
