"""LeRobot dataset v2.1: writer and reader.

Layout (templates in :mod:`curation.formats.lerobot_meta`)::

    meta/info.json                                          features, fps, totals, templates
    meta/episodes.jsonl                                     {episode_index, tasks, length} per line
    meta/tasks.jsonl                                        {task_index, task} per line
    meta/episodes_stats.jsonl                               {episode_index, stats} per line
    meta/stats.json                                         dataset-wide stats (as v2.0 had;
                                                            v2.1 loaders ignore it, checkers read it)
    data/chunk-CCC/episode_EEEEEE.parquet                   one file per episode
    videos/chunk-CCC/<video_key>/episode_EEEEEE.mp4         one file per episode and camera

``CCC = episode_index // chunks_size``. An episode's frames are the whole mp4
(``FrameRef(kind="video", start=0, stop=length)``); step ``i``'s frame is the one presented at
its data ``timestamp``, checked at load (``frame_time_mismatch`` / ``fps_mismatch``); an
``episode_index`` listed on two lines of ``meta/episodes.jsonl`` ledgers both
(``duplicate_episode_index``). The writer streams: one episode's
frames are in memory at a time. Default codec h264 (v2.1 era datasets mostly use it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef
from curation.formats.lerobot_meta import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_REPO_ID,
    V2_CODEBASE_VERSION,
    V2_DATA_PATH,
    V2_EPISODES_PATH,
    V2_EPISODES_STATS_PATH,
    V2_TASKS_PATH,
    V2_VIDEO_PATH,
    video_fps,
)
from curation.formats.lerobot_reader import LeRobotReader, check_video_span, mark_duplicates
from curation.formats.lerobot_write import start_write
from curation.video import check_frame_times, compact_times, encode_video
from schemas import FrameRef
from schemas.errors import LoadError

FORMAT = "lerobot_v2"


def write_lerobot_v2(
    episodes,
    root: str | Path,
    *,
    repo_id: str = DEFAULT_REPO_ID,
    robot_type: str | None = None,
    codec: str = "h264",
    camera_keys: dict[str, str] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``episodes`` (an iterable of :class:`~schemas.Episode`) as a LeRobot v2.1 dataset.

    All episodes must share embodiment, fps and camera roles. ``camera_keys`` maps a camera
    role to its feature key (default ``observation.images.<role>``). Returns ``root``.
    """
    w = start_write(
        episodes, root, FORMAT, codec=codec, camera_keys=camera_keys, repo_id=repo_id, robot_type=robot_type
    )
    (w.root / "meta").mkdir(parents=True, exist_ok=True)
    try:
        with (
            open(w.root / V2_EPISODES_PATH, "w") as ep_jsonl,
            open(w.root / V2_EPISODES_STATS_PATH, "w") as stats_jsonl,
        ):
            for ep_index, ep in w.episodes("lerobot v2.1", progress):
                rows = w.episode_rows(ep_index, ep)
                chunk = ep_index // w.chunks_size
                data_path = w.root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=ep_index)
                data_path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(rows, data_path)
                frames: dict[str, np.ndarray] = {}
                for key, fr in w.camera_frames(ep_index, ep):
                    vpath = w.root / V2_VIDEO_PATH.format(
                        episode_chunk=chunk, video_key=key, episode_index=ep_index
                    )
                    encode_video(fr, vpath, fps=w.fps, codec=codec)
                    frames[key] = fr
                stats = w.add_stats(ep, rows, frames)
                del frames
                ep_jsonl.write(
                    json.dumps({"episode_index": ep_index, "tasks": [ep.instruction], "length": ep.length})
                    + "\n"
                )
                stats_jsonl.write(
                    json.dumps(
                        {"episode_index": ep_index, "stats": {k: v.to_dict() for k, v in stats.items()}}
                    )
                    + "\n"
                )
    except BaseException:
        w.remove_partial()
        raise

    with open(w.root / V2_TASKS_PATH, "w") as f:
        for task, index in w.tasks.items():
            f.write(json.dumps({"task_index": index, "task": task}) + "\n")
    layout = {
        "total_videos": w.n_episodes * len(w.keys),
        "total_chunks": (w.n_episodes - 1) // w.chunks_size + 1,
        "chunks_size": w.chunks_size,
    }
    return w.finish(V2_CODEBASE_VERSION, layout, V2_DATA_PATH, V2_VIDEO_PATH)


class LeRobotV2Reader(LeRobotReader):
    """Episodes of a LeRobot v2.x dataset; each camera's frames are one whole mp4."""

    format = FORMAT
    major = "v2"

    def list_episodes(self) -> list[EpisodeRef]:
        info = self.info
        cams = self.mapped_cameras()
        video_tpl = info.get("video_path") or V2_VIDEO_PATH
        path = self.root / V2_EPISODES_PATH
        if not path.exists():
            raise LoadError("missing_file", "meta/episodes.jsonl not found", path)
        refs, lines = [], []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                index, length = int(row["episode_index"]), int(row["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise LoadError("bad_metadata", f"line {line_no}: {err!r}", path) from err
            chunk = index // int(info.get("chunks_size") or DEFAULT_CHUNK_SIZE)
            data_rel = info["data_path"].format(episode_chunk=chunk, episode_index=index)
            videos = {
                key: video_tpl.format(episode_chunk=chunk, video_key=key, episode_index=index) for key in cams
            }
            refs.append(self.episode_ref(index, data_rel, length, row.get("tasks"), videos))
            lines.append(f"line {line_no}")
        refs = mark_duplicates(refs, lines, [V2_EPISODES_PATH] * len(refs))
        refs.sort(key=lambda r: r.index)
        return refs

    def frame_ref(
        self, root: Path, key: str, video: str, length: int, label: str, timestamps: np.ndarray | None
    ) -> FrameRef:
        vpath = root / video
        fps = video_fps(self.info, key)
        check_video_span(vpath, 0, length, label)
        times = np.arange(length) / fps if timestamps is None else timestamps
        times = check_frame_times(vpath, times, fps, label)
        return FrameRef(
            kind="video", path=str(vpath), start=0, stop=length, fps=fps, times=compact_times(times, 0, fps)
        )
