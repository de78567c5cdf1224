"""Video encode/decode round trips, seeking in long files, and errors naming the file."""

from __future__ import annotations

import gc
import io
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from curation.frames import decode_frames
from curation.video import encode_video, probe_video, read_video
from schemas import FrameRef
from schemas.errors import LoadError
from schemas.video import decode_video_bytes, encode_video_bytes


def smooth_frames(t: int, h: int = 64, w: int = 64, phase: float = 0.0) -> np.ndarray:
    """uint8 [T, H, W, 3]: smooth moving gradients, clearly different from frame to frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for i in range(t):
        k = i + phase
        r = 128 + 100 * np.sin(x / 9 + 0.5 * k)
        g = 128 + 100 * np.cos(y / 11 - 0.4 * k)
        b = 40 + 5 * (k % 36) + 0 * x
        out.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


@pytest.mark.parametrize("codec", ["h264", "av1", "mpeg4"])
def test_round_trip_and_spans(tmp_path, codec):
    frames = smooth_frames(40)
    path = tmp_path / f"clip_{codec}.mp4"
    encode_video(frames, path, fps=10, codec=codec)
    info = probe_video(path)
    assert (info.codec, info.num_frames, info.width, info.height) == (codec, 40, 64, 64)
    assert info.fps == pytest.approx(10.0)
    assert info.duration_s == pytest.approx(4.0, abs=0.11)

    full = read_video(path)
    assert full.shape == frames.shape and full.dtype == np.uint8
    assert psnr(full, frames) >= 30
    span = read_video(path, 13, 27)
    assert span.shape[0] == 14 and psnr(span, frames[13:27]) >= 30
    # Frame-accurate: the span matches its own frames much better than its neighbours'.
    assert psnr(span, frames[13:27]) > psnr(span, frames[14:28]) + 6
    picked = read_video(path, indices=[30, 2, 2, 39])
    assert psnr(picked, frames[[30, 2, 2, 39]]) >= 30


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_span_of_long_concatenated_video(tmp_path, codec):
    """Episodes packed one after another in one file, read back by span (seek, not scan)."""
    lengths = [50, 70, 60, 80]
    episodes = [smooth_frames(n, phase=7 * k) for k, n in enumerate(lengths)]
    path = tmp_path / "packed.mp4"
    encode_video(np.concatenate(episodes), path, fps=20, codec=codec)
    starts = np.cumsum([0, *lengths[:-1]])
    for k in (2, 0, 3, 1):  # out of order on purpose
        got = read_video(path, int(starts[k]), int(starts[k] + lengths[k]))
        assert got.shape[0] == lengths[k]
        assert psnr(got, episodes[k]) >= 30
    far = read_video(path, indices=[5, 250])  # a long gap: decoded with a second seek
    assert psnr(far, np.concatenate(episodes)[[5, 250]]) >= 30


def test_bytes_round_trip():
    frames = smooth_frames(12, 48, 80)
    data = encode_video_bytes(frames, fps=15)
    assert isinstance(data, bytes) and data[4:8] == b"ftyp"
    assert psnr(decode_video_bytes(data), frames) >= 30
    with pytest.raises(LoadError) as err:
        decode_video_bytes(b"not a video at all")
    assert err.value.reason == "bad_video"


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(LoadError) as err:
        read_video(missing)
    assert err.value.reason == "missing_video" and "nope.mp4" in str(err.value)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(LoadError) as err:
        probe_video(text)
    assert err.value.reason == "bad_video" and "notes.mp4" in str(err.value)

    good = tmp_path / "good.mp4"
    encode_video(smooth_frames(30), good, fps=10)
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LoadError) as err:
        read_video(cut)
    assert err.value.reason == "bad_video" and "truncated.mp4" in str(err.value)

    with pytest.raises(LoadError) as err:
        read_video(good, 20, 31)
    assert err.value.reason == "video_too_short" and "good.mp4" in str(err.value)

    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 63, 64, 3), np.uint8), tmp_path / "odd.mp4", fps=10)
    with pytest.raises(ValueError, match="codec"):
        encode_video(smooth_frames(2), tmp_path / "x.mp4", fps=10, codec="prores")


def test_decode_frames_every_kind(tmp_path):
    frames = smooth_frames(30, 32, 48)
    # video: the episode is frames [10, 25) of the file
    path = tmp_path / "v.mp4"
    encode_video(frames, path, fps=10)
    ref = FrameRef(kind="video", path=str(path), start=10, stop=25, fps=10)
    assert psnr(decode_frames(ref), frames[10:25]) >= 30
    assert psnr(decode_frames(ref, [0, 14, 3]), frames[[10, 24, 13]]) >= 30
    with pytest.raises(IndexError):
        decode_frames(ref, [15])

    # hdf5 rows, including unsorted / repeated indices
    h5 = tmp_path / "f.hdf5"
    with h5py.File(h5, "w") as f:
        f["obs/cam"] = frames
    ref = FrameRef(kind="hdf5", path=str(h5), key="obs/cam", start=5, stop=20)
    np.testing.assert_array_equal(decode_frames(ref), frames[5:20])
    np.testing.assert_array_equal(decode_frames(ref, [7, 1, 1]), frames[[12, 6, 6]])
    with pytest.raises(LoadError) as err:
        decode_frames(FrameRef(kind="hdf5", path=str(h5), key="obs/missing", start=0, stop=3))
    assert err.value.reason == "missing_key" and "f.hdf5" in str(err.value)

    # encoded PNG bytes (lossless)
    pngs = []
    for fr in frames[:6]:
        buf = io.BytesIO()
        Image.fromarray(fr).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    ref = FrameRef(kind="encoded", encoded=tuple(pngs))
    np.testing.assert_array_equal(decode_frames(ref, [5, 0]), frames[[5, 0]])
    bad = FrameRef(kind="encoded", encoded=(b"garbage",))
    with pytest.raises(LoadError) as err:
        decode_frames(bad)
    assert err.value.reason == "bad_image"

    # inline
    ref = FrameRef(kind="inline", array=frames)
    np.testing.assert_array_equal(decode_frames(ref, [29, 0]), frames[[29, 0]])
    assert decode_frames(ref).shape == frames.shape


def test_probe_is_remembered_per_file_version(tmp_path, monkeypatch):
    """A packed mp4 is probed once per episode it holds: the header is read once per file
    version, and read again when the file changes."""
    import curation.video as video

    opened = []
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda path: opened.append(path) or real_open(path))
    path = tmp_path / "clip.mp4"
    encode_video(smooth_frames(12), path, fps=10)
    first = [probe_video(path) for _ in range(3)]
    assert [p.num_frames for p in first] == [12, 12, 12] and len(opened) == 1
    encode_video(smooth_frames(20), path, fps=10)  # same name, new content
    assert probe_video(path).num_frames == 20 and len(opened) == 2


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))  # native threads too, which `threading` does not see


def test_packed_spans_decode_on_without_seeking_and_equal_decord(tmp_path, monkeypatch):
    """Consecutive episodes of a packed file: one open cursor, one seek, the same pixels as
    decord (both convert with swscale), also out of order and for scattered frames."""
    import decord

    from curation import video

    lengths = [40, 30, 50, 40, 40]
    path = tmp_path / "packed.mp4"
    encode_video(np.concatenate([smooth_frames(n, phase=5 * k) for k, n in enumerate(lengths)]), path, fps=20)
    starts = np.cumsum([0, *lengths[:-1]]).tolist()
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    seeks = []
    real_seek = video._Cursor._seek
    monkeypatch.setattr(video._Cursor, "_seek", lambda self, i: (seeks.append(i), real_seek(self, i)))
    video.close_cursors()
    for k in range(1, 5):  # in order: the cursor decodes on from where the last episode ended
        span = read_video(path, starts[k], starts[k] + lengths[k])
        assert np.array_equal(
            span, reader.get_batch(list(range(starts[k], starts[k] + lengths[k]))).asnumpy()
        )
    assert seeks == [starts[1]] and len(video._CURSORS) == 1
    for idx in ([3, 90, 91, 199], [150, 10]):  # backwards and across gaps: seeks, same pixels
        assert np.array_equal(read_video(path, indices=idx), reader.get_batch(idx).asnumpy())
    video.close_cursors()
    assert not video._CURSORS


def test_no_decoder_burns_cpu_while_idle(tmp_path):
    """An open decord reader spins a core while idle (it starved the other Ray workers), so
    none is kept: neither the reader nor any thread of it outlives its read. Only the PyAV
    cursor stays open between episodes."""
    import decord

    from curation import video

    lengths = [60] * 4
    path = tmp_path / "packed.mp4"
    encode_video(np.concatenate([smooth_frames(n, phase=k) for k, n in enumerate(lengths)]), path, fps=20)
    short = tmp_path / "short.mp4"
    encode_video(smooth_frames(20), short, fps=20)
    read_video(path, 60, 120)  # a span of a longer file: the cursor, kept open
    before = _threads()
    read_video(short)  # a whole short file: decord, closed at once
    assert len(video._CURSORS) == 1
    assert not [obj for obj in gc.get_objects() if isinstance(obj, decord.VideoReader)]
    assert _threads() == before, "a decoder thread outlived its read"
    video.close_cursors()


def test_a_cut_packed_video_is_too_short_and_its_cursor_dropped(tmp_path):
    from curation import video
    from tests.support.helpers import cut_video_data

    cut = tmp_path / "cut.mp4"
    encode_video(smooth_frames(200), cut, fps=20)
    cut_video_data(cut, keep=0.6)  # header first, frame data cut: the header promises 200 frames
    video.close_cursors()
    with pytest.raises(LoadError) as err:
        read_video(cut, 150, 190)
    assert err.value.reason == "video_too_short" and "cut.mp4" in str(err.value)
    assert not video._CURSORS
