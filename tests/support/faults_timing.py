"""A timing and rotation fault corpus, built from synthetic episodes (nothing committed).

:func:`build_timing_corpus` writes two LeRobot sources under ``root`` and returns what the
checks of ``tests/curation/test_reliability_timing.py`` need: the sources, the faults that must be
ledgered (:class:`tests.support.faults.Fault`: file, reason, episode label) and the episodes whose
frames must come back right (:class:`FrameCase`).

* ``timing_v2/`` — LeRobot v2.1, 10 Hz data, episodes (by ``episode_index``):

  - 0, 1: good;
  - 2: **variable frame rate** — the high camera's mp4 holds 14 frames at irregular times
    (0, 0.05, 0.1, 0.15, 0.2, 0.3, …), each painted a flat grey that encodes its frame
    number; the data's steps at ``k / 10`` s are frames 0, 2, 4, 5, 6, 8, 9, 11 (by position
    they would be 0..7); the header's average rate is not 10 fps;
  - 3, 4, 5: **rotated** — the high camera's mp4 is coded 48×64 (H×W) with a display matrix
    of 90, 180, 270 degrees (counter-clockwise): displayed 64×48 / 48×64 / 64×48;
  - 6: **fps mismatch** — the high camera re-encoded at 5 fps (the data says 10);
  - 7: **timestamps go backwards** (steps 3 and 4 swapped in the parquet);
  - 8: **a timestamp repeats** (step 5 = step 4);
  - 9: **frames off the data's clock** — every timestamp shifted by +30 ms (same fps);
  - 10 twice: **duplicated episode_index** — ``meta/episodes.jsonl``'s line of episode 11
    says 10, so two lines list episode 10.

* ``timing_v3/`` — LeRobot v3.0 (episodes packed in one mp4 per camera):

  - 0, 1: good;
  - 2: **data/video length disagree** — its video span (``to_timestamp``) is 2 frames short;
  - 3 twice: **duplicated episode_index** — ``meta/episodes``' row of episode 4 says 3.

Frame-identity markers: a flat grey of ``16 + 16·k`` for frame ``k`` survives h264 to within
±2, so the decoded frame's number is ``round((mean - 16) / 16)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.formats.lerobot_v2 import write_lerobot_v2
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.video import encode_video
from tests.support.faults import Fault
from tests.support.helpers import make_episodes, smooth_frames

V2_LENGTHS = (12, 14, 8, 10, 10, 10, 12, 12, 12, 12, 11, 13)
V3_LENGTHS = (15, 17, 16, 14, 18)
FPS = 10.0
# the VFR file: frame k is presented at VFR_PTS[k]; the data's steps at i / 10 s are frames VFR_PICKED
VFR_PTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8)
VFR_PICKED = (0, 2, 4, 5, 6, 8, 9, 11)
ROTATED = {3: 90, 4: 180, 5: 270}  # v2 episode -> display rotation (degrees counter-clockwise)
CODED_HW = (48, 64)  # the rotated files' coded height, width


@dataclass(frozen=True)
class FrameCase:
    """An episode that must load, whose high-camera frames are checked."""

    group: str
    name: str
    injected: str
    episode_index: int
    video: str  # the mp4 carrying the fault
    expected: np.ndarray  # frame numbers [T] (VFR) or displayed frames [T, H, W, 3] (rotation)


def marker_frames(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """uint8 [n, h, w, 3]: frame k is a flat grey 16 + 16·k."""
    return np.broadcast_to((16 + 16 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3)).copy()


def marker_numbers(frames_THWC: np.ndarray) -> np.ndarray:
    """The frame number painted into each frame by :func:`marker_frames`."""
    return np.rint((frames_THWC.reshape(len(frames_THWC), -1).mean(1) - 16) / 16).astype(np.int64)


def write_mp4(path: Path, frames_THWC: np.ndarray, pts_s: list[float], rotation: int = 0) -> None:
    """h264 mp4 with frame k presented at ``pts_s[k]`` seconds (millisecond clock) and, when
    ``rotation`` is set, a display matrix turning it that many degrees counter-clockwise."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(FPS))
        stream.height, stream.width = frames_THWC.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = tb
        stream.options = {"crf": "18"}
        if rotation:
            stream.set_display_rotation(rotation)
        for frame_HWC, t in zip(frames_THWC, pts_s, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HWC), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _set_timestamps(parquet: Path, change) -> None:
    table = pq.read_table(parquet)
    ts = table.column("timestamp").to_numpy().astype(np.float64)
    ts = change(ts.copy())
    col = table.schema.get_field_index("timestamp")
    pq.write_table(table.set_column(col, "timestamp", pa.array(ts.astype(np.float32))), parquet)


def build_timing_corpus(root: Path) -> tuple[dict[str, Path], list[Fault], list[FrameCase], int]:
    """Write the corpus; returns (source name -> path, faults, frame cases, episodes listed)."""
    root.mkdir(parents=True, exist_ok=True)
    faults: list[Fault] = []
    cases: list[FrameCase] = []

    # ---- LeRobot v2.1 -----------------------------------------------------------------------
    v2 = root / "timing_v2"
    write_lerobot_v2(make_episodes(V2_LENGTHS, fps=FPS, seed=5, source="timing_v2"), v2, codec="h264")

    def video(i: int) -> Path:
        return v2 / f"videos/chunk-000/observation.images.high/episode_{i:06d}.mp4"

    def data(i: int) -> Path:
        return v2 / f"data/chunk-000/episode_{i:06d}.parquet"

    write_mp4(video(2), marker_frames(len(VFR_PTS)), list(VFR_PTS))
    cases.append(
        FrameCase(
            "timing",
            "variable frame rate video",
            f"high-camera mp4 of {len(VFR_PTS)} frames at irregular times {list(VFR_PTS)} s, "
            f"data steps every {1 / FPS:g} s",
            2,
            str(video(2)),
            np.asarray(VFR_PICKED),
        )
    )
    for i, rotation in ROTATED.items():
        coded = smooth_frames(V2_LENGTHS[i], 3.0 * i, *CODED_HW)
        write_mp4(video(i), coded, [k / FPS for k in range(len(coded))], rotation=rotation)
        cases.append(
            FrameCase(
                "pixels",
                f"rotated video ({rotation} degrees)",
                f"high-camera mp4 coded W×H {CODED_HW[1]}×{CODED_HW[0]} with a display matrix of {rotation} "
                "degrees counter-clockwise",
                i,
                str(video(i)),
                np.rot90(coded, rotation // 90, axes=(1, 2)),
            )
        )

    encode_video(smooth_frames(V2_LENGTHS[6], 18.0), video(6), fps=FPS / 2)
    faults.append(
        Fault(
            "fps mismatch",
            f"high-camera mp4 re-encoded at {FPS / 2:g} fps; info.json and the data say {FPS:g}",
            str(video(6)),
            ("fps_mismatch",),
            f"declared {FPS:g} fps",
            "episode_000006",
        )
    )
    _set_timestamps(data(7), lambda ts: ts[[0, 1, 2, 4, 3, *range(5, len(ts))]])
    faults.append(
        Fault(
            "timestamps go backwards",
            "parquet 'timestamp' of steps 3 and 4 swapped",
            str(data(7)),
            ("bad_timestamps",),
            "goes backwards at step 4",
            "episode_000007",
        )
    )

    def repeat(ts):
        ts[5] = ts[4]
        return ts

    _set_timestamps(data(8), repeat)
    faults.append(
        Fault(
            "timestamp repeats",
            "parquet 'timestamp' of step 5 set to step 4's",
            str(data(8)),
            ("bad_timestamps",),
            "repeats at step 5",
            "episode_000008",
        )
    )
    _set_timestamps(data(9), lambda ts: ts + 0.03)
    faults.append(
        Fault(
            "frames off the data's clock",
            "every parquet 'timestamp' shifted by +30 ms (video and data both 10 fps)",
            str(video(9)),
            ("frame_time_mismatch",),
            "wants t=0.030000 s, nearest frame pts=0.000000 s",
            "episode_000009",
        )
    )
    episodes_jsonl = v2 / "meta/episodes.jsonl"
    lines = episodes_jsonl.read_text().splitlines()
    row = json.loads(lines[11])
    lines[11] = json.dumps({**row, "episode_index": 10})
    episodes_jsonl.write_text("\n".join(lines) + "\n")
    for line in (11, 12):
        faults.append(
            Fault(
                f"duplicated episode_index (v2.1, line {line})",
                "meta/episodes.jsonl: the line of episode 11 says episode_index 10",
                str(episodes_jsonl),
                ("duplicate_episode_index",),
                f"this is line {line}",
                "episode_000010",
            )
        )

    # ---- LeRobot v3.0 -----------------------------------------------------------------------
    v3 = root / "timing_v3"
    write_lerobot_v3(make_episodes(V3_LENGTHS, fps=FPS, seed=6, source="timing_v3"), v3, codec="h264")
    meta = v3 / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(meta)
    to_col = "videos/observation.images.high/to_timestamp"
    to_ts = table.column(to_col).to_numpy().copy()
    to_ts[2] -= 2 / FPS
    index = table.column("episode_index").to_numpy().copy()
    index[4] = 3
    table = table.set_column(table.schema.get_field_index(to_col), to_col, pa.array(to_ts))
    table = table.set_column(table.schema.get_field_index("episode_index"), "episode_index", pa.array(index))
    pq.write_table(table, meta)
    packed = v3 / "videos/observation.images.high/chunk-000/file-000.mp4"
    faults.append(
        Fault(
            "data/video length disagree (v3.0)",
            "meta/episodes: episode 2's high-camera to_timestamp 2 frames early (span 14 frames, 16 data rows)",
            str(packed),
            ("length_mismatch",),
            "is 14 frames, episode has 16",
            "episode_000002",
        )
    )
    for row_no in (3, 4):
        faults.append(
            Fault(
                f"duplicated episode_index (v3.0, row {row_no})",
                "meta/episodes parquet: the row of episode 4 says episode_index 3",
                str(meta),
                ("duplicate_episode_index",),
                f"this is row {row_no}",
                "episode_000003",
            )
        )
    listed = len(V2_LENGTHS) + len(V3_LENGTHS)
    return {"timing_v2": v2, "timing_v3": v3}, faults, cases, listed
