"""LeRobot dataset v3.0: writer and reader.

Layout (templates in :mod:`curation.formats.lerobot_common`)::

    meta/info.json                                   features, fps, totals, path templates
    meta/stats.json                                  dataset-wide stats per feature
    meta/tasks.parquet                               task text (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet         one row per episode: length, tasks, where
                                                     its rows and video spans are, its stats
    data/chunk-CCC/file-FFF.parquet                  frame rows of many episodes
    videos/<video_key>/chunk-CCC/file-FFF.mp4        many episodes back to back per file

An episode's frames are the span ``[from_timestamp, to_timestamp)`` of its camera's mp4,
so the reader turns them into ``FrameRef(kind="video", start=round(from·fps), stop=…)``.

The writer streams: episodes arrive one at a time from an iterable, each episode's frames
are decoded, appended to the open mp4 of each camera and dropped; each episode's rows are
one parquet row group (so the reader prunes by ``episode_index``). A data file rolls over to
the next ``file-FFF`` once it holds ``data_file_mb`` MB (uncompressed), a video file once it
reaches ``video_file_mb`` MB, and after ``chunks_size`` files the chunk index advances.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef, LoadError
from curation.formats.lerobot_common import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_REPO_ID,
    INDEX_FEATURES,
    INFO_PATH,
    STATS_PATH,
    V3_CODEBASE_VERSION,
    V3_DATA_PATH,
    V3_EPISODES_PATH,
    V3_TASKS_PATH,
    V3_VIDEO_PATH,
    LeRobotReader,
    RunningStats,
    build_episode,
    camera_key_map,
    check_compatible,
    check_vector_features,
    check_video_span,
    episode_stats,
    fps_value,
    frames_schema,
    frames_table,
    mapped_cameras,
    merge_stats,
    next_chunk_file,
    peek,
    read_episode_rows,
    source_name,
    spec_for,
    vector_features,
    video_feature,
    video_fps,
    write_json,
)
from curation.formats.mapping import SourceMapping
from curation.frames import decode_frames
from curation.video import VideoWriter
from schemas import Episode, FrameRef, episode_id_for, get_embodiment

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
    role to its feature key (default ``observation.images.<role>``). Returns ``root``.
    """
    root = Path(root)
    if (root / "meta").exists() or (root / "data").exists():
        raise FileExistsError(f"{root} already holds a dataset (meta/ or data/ exists)")
    first, stream = peek(episodes)
    spec = get_embodiment(first.embodiment)
    keys = camera_key_map(spec, first.cameras, camera_keys)  # role -> feature key
    fps = float(first.fps)
    chunks_size = DEFAULT_CHUNK_SIZE
    root.mkdir(parents=True, exist_ok=True)

    data = _RollingParquet(root, frames_schema(spec), data_file_mb, chunks_size)
    videos = {key: _RollingVideo(root, key, fps, codec, video_file_mb, chunks_size) for key in keys.values()}
    shapes: dict[str, tuple[int, int]] = {}
    tasks: dict[str, int] = {}
    ep_rows: list[dict[str, Any]] = []
    totals: dict[str, RunningStats] = {}
    n_frames = 0
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, desc=f"lerobot v3 -> {root}", unit="ep")
    try:
        for ep_index, ep in enumerate(stream):
            check_compatible(ep, first, keys, f"episode {ep_index} ({ep.episode_id})")
            task_index = tasks.setdefault(ep.instruction, len(tasks))
            rows = frames_table(ep, spec, ep_index, n_frames, task_index)
            chunk, file = data.append(rows)
            row: dict[str, Any] = {
                "episode_index": ep_index,
                "tasks": [ep.instruction],
                "length": ep.length,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": n_frames,
                "dataset_to_index": n_frames + ep.length,
            }
            frames: dict[str, np.ndarray] = {}
            for role, key in keys.items():
                fr = decode_frames(ep.cameras[role])  # one episode, one camera in memory at a time
                shapes.setdefault(key, (int(fr.shape[1]), int(fr.shape[2])))
                row.update(videos[key].append(fr))
                frames[key] = fr
            stats = episode_stats(ep, rows, frames)
            del frames
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            row.update(_stats_columns(stats))
            ep_rows.append(row)
            totals = merge_stats(totals, stats)
            n_frames += ep.length
    except BaseException:
        data.close()
        for v in videos.values():
            if v.writer is not None:
                v.writer.close()
        for sub in ("meta", "data", "videos"):  # ours: they did not exist before this call
            shutil.rmtree(root / sub, ignore_errors=True)
        raise
    data.close()
    for v in videos.values():
        v.close()

    episodes_path = root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), episodes_path)
    _write_tasks(root / V3_TASKS_PATH, tasks)
    features = {
        **vector_features(spec),
        **{key: video_feature(*shapes[key], fps, codec) for key in keys.values()},
        **INDEX_FEATURES,
    }
    info = {
        "codebase_version": V3_CODEBASE_VERSION,
        "robot_type": robot_type or spec.name,
        "total_episodes": len(ep_rows),
        "total_frames": n_frames,
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": video_file_mb,
        "fps": fps_value(fps),
        "splits": {"train": f"0:{len(ep_rows)}"},
        "data_path": V3_DATA_PATH,
        "video_path": V3_VIDEO_PATH if keys else None,
        "features": features,
    }
    write_json(root / INFO_PATH, info)
    write_json(root / STATS_PATH, {k: v.to_dict() for k, v in totals.items()})
    SourceMapping(
        embodiment=spec.name,
        cameras={key: role for role, key in keys.items()},
        source=source_name(repo_id, root),
        extra={"repo_id": repo_id, "format": FORMAT},
    ).write(root)
    return root


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
        spec = spec_for(self.mapping, self.root / INFO_PATH)
        check_vector_features(info, self.mapping, spec, self.root / INFO_PATH)
        cams = mapped_cameras(info, self.mapping, self.root / INFO_PATH)
        data_tpl = info["data_path"]
        video_tpl = info.get("video_path") or V3_VIDEO_PATH
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for key in cams:
            need += [
                f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
            ]
        refs: list[EpisodeRef] = []
        for meta_file in self._episode_files():
            try:
                names = pq.read_schema(meta_file).names
            except (OSError, pa.ArrowInvalid) as err:
                raise LoadError("bad_parquet", f"cannot read: {err}", meta_file) from err
            missing = [c for c in need if c not in names]
            if missing:
                raise LoadError("missing_column", f"episodes metadata lacks {missing}", meta_file)
            cols = need + (["tasks"] if "tasks" in names else [])
            for row in pq.read_table(meta_file, columns=cols).to_pylist():
                idx = int(row["episode_index"])
                data_rel = data_tpl.format(
                    chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                )
                task_list = row.get("tasks") or []
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
                refs.append(
                    EpisodeRef(
                        format=FORMAT,
                        root=str(self.root),
                        path=str(self.root / data_rel),
                        index=idx,
                        source=self.source,
                        locator={
                            "data": data_rel,
                            "length": int(row["length"]),
                            "instruction": task_list[0] if task_list else self.mapping.instruction,
                            "videos": videos,
                        },
                    )
                )
        refs.sort(key=lambda r: r.index)
        return refs

    def load(self, ref: EpisodeRef) -> Episode:
        info = self.info
        root = Path(ref.root)
        path = root / ref.locator["data"]
        label = f"episode_{ref.index:06d}"
        spec = spec_for(self.mapping, path)
        cams = mapped_cameras(info, self.mapping, root / INFO_PATH)
        columns = [self.mapping.state_key, self.mapping.action_key, "timestamp", "frame_index"]
        rows = read_episode_rows(path, columns, ref.index, label)
        length = int(ref.locator["length"])
        cameras: dict[str, FrameRef] = {}
        for key, role in cams.items():
            v = ref.locator["videos"][key]
            fps_v = video_fps(info, key)
            start = round(v["from_timestamp"] * fps_v)
            stop = round(v["to_timestamp"] * fps_v)
            vpath = root / v["path"]
            if stop - start != length:
                raise LoadError(
                    "length_mismatch",
                    f"video span [{v['from_timestamp']}, {v['to_timestamp']}) s is {stop - start} frames, "
                    f"episode has {length}",
                    vpath,
                    label,
                )
            check_video_span(vpath, start, stop, label)
            cameras[role] = FrameRef(kind="video", path=str(vpath), start=start, stop=stop, fps=fps_v)
        return build_episode(
            rows=rows,
            spec=spec,
            mapping=self.mapping,
            episode_id=episode_id_for(ref.source, ref.locator["data"], ref.index),
            source=ref.source,
            instruction=ref.locator["instruction"],
            fps=float(info["fps"]),
            cameras=cameras,
            path=path,
            label=label,
            episode_index=ref.index,
            expected_length=length,
        )
