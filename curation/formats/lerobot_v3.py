"""LeRobot dataset v3.0: writer and reader.

Layout (templates in :mod:`curation.formats.lerobot_meta`)::

    meta/info.json                                   features, fps, totals, path templates
    meta/stats.json                                  dataset-wide stats per feature
    meta/tasks.parquet                               task text (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, where
                                                     its rows and video spans are, its stats
    data/chunk-CCC/file-FFF.parquet                  frame rows of many episodes
    videos/<video_key>/chunk-CCC/file-FFF.mp4        many episodes back to back per file

An episode's frames are the span ``[from_timestamp, to_timestamp)`` of its camera's mp4,
so the reader turns them into ``FrameRef(kind="video", start=round(from·fps), stop=…)``;
step ``i``'s frame is the one presented at ``from_timestamp + timestamp[i]`` (LeRobot's rule),
checked at load against the packets' pts: ``frame_time_mismatch`` / ``fps_mismatch`` when a
step has no frame, ``length_mismatch`` when the span's frame count or its end disagrees with
the data rows, ``duplicate_episode_index`` for every row of an index that
``meta/episodes`` lists more than once.

The writer streams: episodes arrive one at a time from an iterable, each episode's frames
are decoded, appended to the open mp4 of each camera and dropped; each episode's rows are
one parquet row group (so the reader prunes by ``episode_index``). A data file rolls over to
the next ``file-FFF`` once it holds ``data_file_mb`` MB (uncompressed), a video file once it
reaches ``video_file_mb`` MB, and after ``chunks_size`` files the chunk index advances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef
from curation.formats.lerobot_meta import (
    DEFAULT_REPO_ID,
    V3_CODEBASE_VERSION,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_TASKS_PATH,
    V3_VIDEO_PATH,
    frames_schema,
    next_chunk_file,
    video_fps,
)
from curation.formats.lerobot_reader import LeRobotReader, check_video_span, mark_duplicates
from curation.formats.lerobot_stats import RunningStats
from curation.formats.lerobot_write import start_write
from curation.video import check_frame_times, compact_times
from schemas import FrameRef
from schemas.errors import LoadError
from schemas.video import TOLERANCE_S, VideoWriter

FORMAT = "lerobot_v3"
_MB = 1024 * 1024


class _RollingVideo:
    """One camera's current mp4; rolls to the next chunk/file past the size limit."""

    def __init__(self, root: Path, key: str, fps: float, codec: str, limit_mb: float, chunks_size: int):
        self.root, self.key, self.fps, self.codec = root, key, fps, codec
        self.limit_bytes, self.chunks_size = limit_mb * _MB, chunks_size
        self.chunk, self.file = 0, 0
        self.writer: VideoWriter | None = None
        self.part: Path | None = None

    def path(self) -> Path:
        return self.root / V3_VIDEO_PATH.format(
            video_key=self.key, chunk_index=self.chunk, file_index=self.file
        )

    def append(self, frames_THWC: np.ndarray) -> dict[str, Any]:
        # Compressed bytes so far; encoders hold back their lookahead (x264: ~40 frames), so a
        # file overshoots the limit by at most that much video.
        if self.writer is not None and self.writer.bytes_muxed >= self.limit_bytes:
            self.close()
            self.chunk, self.file = next_chunk_file(self.chunk, self.file, self.chunks_size)
        if self.writer is None:
            final = self.path()
            final.parent.mkdir(parents=True, exist_ok=True)
            self.part = final.with_name(final.name + ".part")
            self.writer = VideoWriter(self.part, self.fps, self.codec)
        first, stop = self.writer.write(frames_THWC)
        return {
            f"videos/{self.key}/chunk_index": self.chunk,
            f"videos/{self.key}/file_index": self.file,
            f"videos/{self.key}/from_timestamp": first / self.fps,
            f"videos/{self.key}/to_timestamp": stop / self.fps,
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.part.replace(self.path())
            self.writer = None


class _RollingParquet:
    """The current data parquet; one row group per episode; rolls past the size limit."""

    def __init__(self, root: Path, schema: pa.Schema, limit_mb: float, chunks_size: int):
        self.root, self.schema = root, schema
        self.limit_bytes, self.chunks_size = limit_mb * _MB, chunks_size
        self.chunk, self.file, self.bytes = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None

    def append(self, rows: pa.Table) -> tuple[int, int]:
        if self.writer is not None and self.bytes >= self.limit_bytes:
            self.close()
            self.chunk, self.file = next_chunk_file(self.chunk, self.file, self.chunks_size)
        if self.writer is None:
            path = self.root / V3_DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema, compression="snappy")
            self.bytes = 0
        self.writer.write_table(rows, row_group_size=max(1, len(rows)))
        self.bytes += rows.nbytes
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _stats_columns(stats: dict[str, RunningStats]) -> dict[str, Any]:
    return {f"stats/{key}/{name}": value for key, st in stats.items() for name, value in st.to_dict().items()}


def write_lerobot_v3(
    episodes,
    root: str | Path,
    *,
    repo_id: str = DEFAULT_REPO_ID,
    robot_type: str | None = None,
    codec: str = "av1",
    camera_keys: dict[str, str] | None = None,
    data_file_mb: float = 100,
    video_file_mb: float = 500,
    progress: bool = False,
) -> Path:
    """Write ``episodes`` (an iterable of :class:`~schemas.Episode`) as a LeRobot v3.0 dataset.

    All episodes must share embodiment, fps and camera roles. ``camera_keys`` maps a camera
    role to its feature key (default ``observation.images.<role>``). A data parquet rolls over
    to the next file past ``data_file_mb`` MB, an mp4 past ``video_file_mb`` MB. Returns ``root``.
    """
    w = start_write(
        episodes, root, FORMAT, codec=codec, camera_keys=camera_keys, repo_id=repo_id, robot_type=robot_type
    )
    root = w.root
    root.mkdir(parents=True, exist_ok=True)

    data = _RollingParquet(root, frames_schema(w.spec), data_file_mb, w.chunks_size)
    videos = {
        key: _RollingVideo(root, key, w.fps, codec, video_file_mb, w.chunks_size) for key in w.keys.values()
    }
    ep_rows: list[dict[str, Any]] = []
    try:
        for ep_index, ep in w.episodes("lerobot v3", progress):
            rows = w.episode_rows(ep_index, ep)
            chunk, file = data.append(rows)
            row: dict[str, Any] = {
                "episode_index": ep_index,
                "tasks": [ep.instruction],
                "length": ep.length,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": w.n_frames,
                "dataset_to_index": w.n_frames + ep.length,
            }
            frames: dict[str, np.ndarray] = {}
            for key, fr in w.camera_frames(ep_index, ep):  # one episode, one camera in memory at a time
                row.update(videos[key].append(fr))
                frames[key] = fr
            stats = w.add_stats(ep, rows, frames)
            del frames
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            row.update(_stats_columns(stats))
            ep_rows.append(row)
    except BaseException:
        data.close()
        for v in videos.values():
            if v.writer is not None:
                v.writer.close()
        w.remove_partial()
        raise
    data.close()
    for v in videos.values():
        v.close()

    episodes_path = root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), episodes_path)
    _write_tasks(root / V3_TASKS_PATH, w.tasks)
    layout = {
        "chunks_size": w.chunks_size,
        "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": video_file_mb,
    }
    return w.finish(V3_CODEBASE_VERSION, layout, V3_DATA_PATH, V3_VIDEO_PATH)


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """``meta/tasks.parquet`` as LeRobot writes it: a pandas frame indexed by task text."""
    import pandas as pd

    df = pd.DataFrame(
        {"task_index": np.array(list(tasks.values()), np.int64)}, index=pd.Index(list(tasks), name="task")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)


# ---- reader -------------------------------------------------------------------------------


class LeRobotV3Reader(LeRobotReader):
    """Episodes of a LeRobot v3.0 dataset; frames are spans of the packed mp4 files."""

    format = FORMAT
    major = "v3"

    def _episode_files(self) -> list[Path]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise LoadError(
                "missing_file", "no meta/episodes/chunk-*/file-*.parquet", self.root / "meta" / "episodes"
            )
        return files

    def list_episodes(self) -> list[EpisodeRef]:
        info = self.info
        cams = self.mapped_cameras()
        data_tpl = info["data_path"]
        video_tpl = info.get("video_path") or V3_VIDEO_PATH
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for key in cams:
            need += [
                f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
            ]
        refs: list[EpisodeRef] = []
        rows_at: list[str] = []
        files_at: list[str] = []
        for meta_file in self._episode_files():
            try:
                names = pq.read_schema(meta_file).names
            except (OSError, pa.ArrowInvalid) as err:
                raise LoadError("bad_parquet", f"cannot read: {err}", meta_file) from err
            missing = [c for c in need if c not in names]
            if missing:
                raise LoadError("missing_column", f"episodes metadata lacks {missing}", meta_file)
            cols = need + (["tasks"] if "tasks" in names else [])
            for row_no, row in enumerate(pq.read_table(meta_file, columns=cols).to_pylist()):
                idx = int(row["episode_index"])
                data_rel = data_tpl.format(
                    chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                )
                videos = {
                    key: {
                        "path": video_tpl.format(
                            video_key=key,
                            chunk_index=row[f"videos/{key}/chunk_index"],
                            file_index=row[f"videos/{key}/file_index"],
                        ),
                        "from_timestamp": float(row[f"videos/{key}/from_timestamp"]),
                        "to_timestamp": float(row[f"videos/{key}/to_timestamp"]),
                    }
                    for key in cams
                }
                refs.append(self.episode_ref(idx, data_rel, int(row["length"]), row.get("tasks"), videos))
                rows_at.append(f"row {row_no}")
                files_at.append(str(meta_file.relative_to(self.root)))
        refs = mark_duplicates(refs, rows_at, files_at)
        refs.sort(key=lambda r: r.index)
        return refs

    def frame_ref(
        self,
        root: Path,
        key: str,
        video: dict[str, Any],
        length: int,
        label: str,
        timestamps: np.ndarray | None,
    ) -> FrameRef:
        fps_v = video_fps(self.info, key)
        t_from, t_to = float(video["from_timestamp"]), float(video["to_timestamp"])
        start = round(t_from * fps_v)
        stop = round(t_to * fps_v)
        vpath = root / video["path"]
        if stop - start != length:
            raise LoadError(
                "length_mismatch",
                f"video span [{t_from}, {t_to}) s is {stop - start} frames, episode has {length}",
                vpath,
                label,
            )
        check_video_span(vpath, start, stop, label)
        times = t_from + (np.arange(length) / fps_v if timestamps is None else timestamps)
        if length and times[-1] >= t_to - TOLERANCE_S:  # the last step is presented before the span ends
            raise LoadError(
                "length_mismatch",
                f"data timestamps reach {times[-1] - t_from:.6f} s, past the video span "
                f"[{t_from}, {t_to}) s of {t_to - t_from:.6f} s",
                vpath,
                label,
            )
        times = check_frame_times(vpath, times, fps_v, label)
        return FrameRef(
            kind="video",
            path=str(vpath),
            start=start,
            stop=stop,
            fps=fps_v,
            times=compact_times(times, start, fps_v),
        )
