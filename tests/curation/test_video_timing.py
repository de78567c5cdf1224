"""Frames by presentation time: the pts list, matching with a tolerance, the checks readers run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.frames import decode_frames
from curation.video import (
    check_frame_times,
    check_timestamps,
    compact_times,
    encode_video,
    frame_times,
    match_times,
    read_video,
)
from schemas import FrameRef, SchemaError
from schemas.episode import FRAME_REF_TYPE
from schemas.errors import LoadError
from schemas.video import TOLERANCE_S, decode_video_bytes
from tests.support.faults_timing import marker_frames, marker_numbers, write_mp4


def test_frame_times_are_the_pts_and_match_within_tolerance(tmp_path):
    path = tmp_path / "cfr.mp4"
    encode_video(marker_frames(12), path, fps=8)
    np.testing.assert_allclose(frame_times(path), np.arange(12) / 8)
    assert match_times(path, [0.375, 0.0, 0.125 + 0.9 * TOLERANCE_S]).tolist() == [3, 0, 1]
    with pytest.raises(LoadError) as err:
        match_times(path, [0.125 + 2 * TOLERANCE_S])
    assert err.value.reason == "frame_time_mismatch" and "cfr.mp4" in str(err.value)
    assert "wants t=0.125200 s, nearest frame pts=0.125000 s" in err.value.detail
    with pytest.raises(LoadError) as err:
        match_times(path, [12 / 8])  # one frame past the end
    assert err.value.reason == "video_too_short"


def test_float32_timestamps_far_into_a_file_still_match(tmp_path):
    """LeRobot stores timestamps as float32: at 2000 s their rounding (~1e-4 s) would exceed
    the tolerance on its own; the float32 slack keeps such files readable."""
    path = tmp_path / "late.mp4"
    write_mp4(path, marker_frames(4), [0.0, 2000.0, 2000.1, 2000.2])
    want = np.float32([2000.1, 2000.2]).astype(np.float64) + 1.5e-4
    assert np.all(np.abs(want - [2000.1, 2000.2]) > TOLERANCE_S)
    assert match_times(path, want).tolist() == [2, 3]


def test_check_timestamps_names_the_step():
    check_timestamps(np.array([0.0, 0.1, 0.25]), "d.parquet", "episode_000001")
    for ts, fragment in (
        ([0.0, 0.2, 0.1], "goes backwards at step 2"),
        ([0.0, 0.1, 0.1], "repeats at step 2"),
        ([0.0, np.nan, 0.2], "step 1 is nan"),
    ):
        with pytest.raises(LoadError) as err:
            check_timestamps(np.array(ts), "d.parquet", "episode_000001")
        assert err.value.reason == "bad_timestamps" and fragment in err.value.detail
        assert err.value.path == "d.parquet" and err.value.episode == "episode_000001"


def test_a_header_rate_off_the_declared_fps_is_accepted_when_the_frames_are_where_the_steps_say(tmp_path):
    """Frames are chosen by time: a variable-rate file (its header's average rate is not the
    data's fps) loads when each step finds its frame; a file whose frames miss the steps is
    an fps_mismatch when the rates differ, a frame_time_mismatch when they agree."""
    vfr = tmp_path / "vfr.mp4"
    write_mp4(vfr, marker_frames(5), [0.0, 0.05, 0.1, 0.2, 0.3])
    check_frame_times(vfr, np.arange(4) / 10, 10.0, "ep")  # steps at 0, .1, .2, .3: frames 0, 2, 3, 4
    slow = tmp_path / "slow.mp4"
    encode_video(marker_frames(6), slow, fps=5)
    with pytest.raises(LoadError) as err:
        check_frame_times(slow, np.arange(6) / 10, 10.0, "ep")
    assert (err.value.reason, err.value.episode) == ("fps_mismatch", "ep")
    assert "declared 10 fps, the video's header says 5 fps" in err.value.detail
    with pytest.raises(LoadError) as err:
        check_frame_times(slow, np.arange(6) / 5 + 0.01, 5.0, "ep")
    assert err.value.reason == "frame_time_mismatch"


def test_frame_ref_times_pick_frames_and_travel_through_arrow(tmp_path):
    path = tmp_path / "vfr.mp4"
    write_mp4(path, marker_frames(6), [0.0, 0.04, 0.1, 0.15, 0.2, 0.33])
    times = (0.0, 0.1, 0.2, 0.33)
    ref = FrameRef(kind="video", path=str(path), start=0, stop=4, fps=10.0, times=times).validate()
    assert marker_numbers(decode_frames(ref)).tolist() == [0, 2, 4, 5]
    assert marker_numbers(decode_frames(ref, [3, 1])).tolist() == [5, 2]
    row = pa.array([ref.to_row()], type=FRAME_REF_TYPE).to_pylist()[0]
    assert FrameRef.from_row(row) == ref
    grid = FrameRef(kind="video", path=str(path), start=0, stop=3, fps=10.0)  # no times: i / fps
    assert marker_numbers(decode_frames(grid)).tolist() == [0, 2, 4]
    with pytest.raises(LoadError) as err:  # the grid's fourth step, 0.3 s, has no frame
        decode_frames(FrameRef(kind="video", path=str(path), start=0, stop=4, fps=10.0))
    assert err.value.reason == "frame_time_mismatch"
    with pytest.raises(SchemaError):
        FrameRef(kind="video", path=str(path), start=0, stop=3, fps=10.0, times=times).validate()


def test_compact_times_drops_only_the_grid():
    grid = np.arange(5, 9) / 10
    assert compact_times(grid.astype(np.float32).astype(np.float64), 5, 10.0) == ()
    assert compact_times(grid + 0.01, 5, 10.0) == tuple((grid + 0.01).tolist())


def test_a_cut_file_lists_the_frames_before_the_cut(tmp_path):
    from tests.support.helpers import cut_video_data

    path = tmp_path / "cut.mp4"
    encode_video(marker_frames(60), path, fps=20)
    cut_video_data(path, keep=0.5)
    have = frame_times(path)
    assert 0 < have.size < 60
    with pytest.raises(LoadError) as err:
        read_video(path, times=[59 / 20])
    assert err.value.reason == "video_too_short"


def test_decord_is_used_only_where_its_frame_timestamps_agree_with_the_pts(tmp_path, monkeypatch):
    """decord keeps the speed path where its per-frame timestamps are the pts list (constant
    or variable rate); where they disagree its frames are refused and the cursor reads by time."""
    import decord

    from curation import video

    used = []
    real = video._read_decord

    def spy(path, wanted):
        out = real(path, wanted)
        used.append(out is not None)
        return out

    monkeypatch.setattr(video, "_read_decord", spy)
    cfr, vfr = tmp_path / "cfr.mp4", tmp_path / "vfr.mp4"
    encode_video(marker_frames(10), cfr, fps=10)
    write_mp4(vfr, marker_frames(10), [0.0, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.55, 0.7, 0.9])
    steps = [0.0, 0.1, 0.2, 0.4, 0.5, 0.7, 0.9]
    assert marker_numbers(read_video(cfr)).tolist() == list(range(10)) and used == [True]
    assert marker_numbers(read_video(vfr, times=steps)).tolist() == [0, 2, 3, 5, 6, 8, 9]
    # decord numbering frames differently (its timestamps shifted by one frame): refused
    real_ts = decord.VideoReader.get_frame_timestamp
    monkeypatch.setattr(
        decord.VideoReader,
        "get_frame_timestamp",
        lambda self, idx: real_ts(self, [min(i + 1, 9) for i in idx]),
    )
    used.clear()
    assert marker_numbers(read_video(vfr, times=steps)).tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert used == [False]
    video.close_cursors()


def test_decode_video_bytes_picks_frames_by_time(tmp_path):
    path = tmp_path / "vfr.mp4"
    write_mp4(path, marker_frames(5), [0.0, 0.05, 0.1, 0.2, 0.3])
    data = path.read_bytes()
    assert marker_numbers(decode_video_bytes(data)).tolist() == [0, 1, 2, 3, 4]
    assert marker_numbers(decode_video_bytes(data, times=[0.3, 0.1, 0.0])).tolist() == [4, 2, 0]
    with pytest.raises(LoadError) as err:
        decode_video_bytes(data, times=[0.15])
    assert err.value.reason == "frame_time_mismatch" and err.value.path == "<bytes>"


def test_a_declared_rate_that_rounds_the_files_exact_one_reads_on_the_files_clock(tmp_path):
    """29.97 declared, 30000/1001 in the file: step i/29.97 drifts 3.3e-8 s a frame off frame i and
    leaves LeRobot's 1e-4 s tolerance (plus float32 slack) after ~3,500 frames; the steps are read on the file's clock."""
    from fractions import Fraction

    n = 4500  # 150 s: drift 1.5e-4 s at the end
    path = tmp_path / "ntsc.mp4"
    encode_video(np.zeros((n, 16, 16, 3), np.uint8), path, fps=30000 / 1001, gop=300)  # a camera's NTSC
    pts = frame_times(path)
    assert Fraction(float(1 / np.diff(pts).mean())).limit_denominator(1001) == Fraction(30000, 1001)
    grid = np.arange(n) / 29.97
    with pytest.raises(LoadError):  # the declared clock is off the frames far into the file
        match_times(path, grid)
    times = check_frame_times(path, grid, 29.97, "ep#0")
    assert match_times(path, times).tolist() == list(range(n))
    # a rate that is really another one is still named
    with pytest.raises(LoadError) as err:
        check_frame_times(path, np.arange(n) / 25.0, 25.0, "ep#1")
    assert err.value.reason in ("fps_mismatch", "video_too_short")
