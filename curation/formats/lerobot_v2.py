"""LeRobot dataset v2.1: writer and reader.

Layout (templates in :mod:`curation.formats.lerobot_common`)::

    meta/info.json                                          features, fps, totals, templates
    meta/episodes.jsonl                                     {episode_index, tasks, length} per line
    meta/tasks.jsonl                                        {task_index, task} per line
    meta/episodes_stats.jsonl                               {episode_index, stats} per line
    meta/stats.json                                         dataset-wide stats (as v2.0 had;
                                                            v2.1 loaders ignore it, checkers read it)
    data/chunk-CCC/episode_EEEEEE.parquet                   one file per episode
    videos/chunk-CCC/<video_key>/episode_EEEEEE.mp4         one file per episode and camera

``CCC = episode_index // chunks_size``. An episode's frames are the whole mp4
(``FrameRef(kind="video", start=0, stop=length)``). The writer streams: one episode's
frames are in memory at a time. Default codec h264 (v2.1 era datasets mostly use it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef, LoadError
from curation.formats.lerobot_common import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_REPO_ID,
    INDEX_FEATURES,
    INFO_PATH,
    STATS_PATH,
    V2_CODEBASE_VERSION,
    V2_DATA_PATH,
    V2_EPISODES_PATH,
    V2_EPISODES_STATS_PATH,
    V2_TASKS_PATH,
    V2_VIDEO_PATH,
    LeRobotReader,
    RunningStats,
    build_episode,
    camera_key_map,
    check_compatible,
    check_vector_features,
    check_video_span,
    episode_stats,
    fps_value,
    frames_table,
    mapped_cameras,
    merge_stats,
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
from curation.video import encode_video
from schemas import Episode, FrameRef, episode_id_for, get_embodiment

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
    root = Path(root)
    if (root / "meta").exists() or (root / "data").exists():
        raise FileExistsError(f"{root} already holds a dataset (meta/ or data/ exists)")
    first, stream = peek(episodes)
    spec = get_embodiment(first.embodiment)
    keys = camera_key_map(spec, first.cameras, camera_keys)  # role -> feature key
    fps = float(first.fps)
    chunks_size = DEFAULT_CHUNK_SIZE
    (root / "meta").mkdir(parents=True, exist_ok=True)

    shapes: dict[str, tuple[int, int]] = {}
    tasks: dict[str, int] = {}
    totals: dict[str, RunningStats] = {}
    n_frames = n_episodes = 0
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, desc=f"lerobot v2.1 -> {root}", unit="ep")
    try:
        with (
            open(root / V2_EPISODES_PATH, "w") as ep_jsonl,
            open(root / V2_EPISODES_STATS_PATH, "w") as stats_jsonl,
        ):
            for ep_index, ep in enumerate(stream):
                check_compatible(ep, first, keys, f"episode {ep_index} ({ep.episode_id})")
                task_index = tasks.setdefault(ep.instruction, len(tasks))
                chunk = ep_index // chunks_size
                rows = frames_table(ep, spec, ep_index, n_frames, task_index)
                data_path = root / V2_DATA_PATH.format(episode_chunk=chunk, episode_index=ep_index)
                data_path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(rows, data_path)
                frames: dict[str, np.ndarray] = {}
                for role, key in keys.items():
                    fr = decode_frames(ep.cameras[role])
                    size = (int(fr.shape[1]), int(fr.shape[2]))
                    if shapes.setdefault(key, size) != size:
                        raise ValueError(
                            f"episode {ep_index}: {key} frames are {size}, earlier ones {shapes[key]}"
                        )
                    vpath = root / V2_VIDEO_PATH.format(
                        episode_chunk=chunk, video_key=key, episode_index=ep_index
                    )
                    encode_video(fr, vpath, fps=fps, codec=codec)
                    frames[key] = fr
                stats = episode_stats(ep, rows, frames)
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
                totals = merge_stats(totals, stats)
                n_frames += ep.length
                n_episodes += 1
    except BaseException:
        for sub in ("meta", "data", "videos"):  # ours: they did not exist before this call
            shutil.rmtree(root / sub, ignore_errors=True)
        raise

    with open(root / V2_TASKS_PATH, "w") as f:
        for task, index in tasks.items():
            f.write(json.dumps({"task_index": index, "task": task}) + "\n")
    features = {
        **vector_features(spec),
        **{key: video_feature(*shapes[key], fps, codec) for key in keys.values()},
        **INDEX_FEATURES,
    }
    info = {
        "codebase_version": V2_CODEBASE_VERSION,
        "robot_type": robot_type or spec.name,
        "total_episodes": n_episodes,
        "total_frames": n_frames,
        "total_tasks": len(tasks),
        "total_videos": n_episodes * len(keys),
        "total_chunks": (n_episodes - 1) // chunks_size + 1,
        "chunks_size": chunks_size,
        "fps": fps_value(fps),
        "splits": {"train": f"0:{n_episodes}"},
        "data_path": V2_DATA_PATH,
        "video_path": V2_VIDEO_PATH if keys else None,
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


class LeRobotV2Reader(LeRobotReader):
    """Episodes of a LeRobot v2.x dataset; each camera's frames are one whole mp4."""

    format = FORMAT
    major = "v2"

    def _paths(self, index: int) -> tuple[str, dict[str, str]]:
        info = self.info
        chunk = index // int(info.get("chunks_size") or DEFAULT_CHUNK_SIZE)
        data_rel = info["data_path"].format(episode_chunk=chunk, episode_index=index)
        video_tpl = info.get("video_path") or V2_VIDEO_PATH
        cams = mapped_cameras(info, self.mapping, self.root / INFO_PATH)
        videos = {
            key: video_tpl.format(episode_chunk=chunk, video_key=key, episode_index=index) for key in cams
        }
        return data_rel, videos

    def list_episodes(self) -> list[EpisodeRef]:
        info = self.info
        spec = spec_for(self.mapping, self.root / INFO_PATH)
        check_vector_features(info, self.mapping, spec, self.root / INFO_PATH)
        path = self.root / V2_EPISODES_PATH
        if not path.exists():
            raise LoadError("missing_file", "meta/episodes.jsonl not found", path)
        refs = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                index, length = int(row["episode_index"]), int(row["length"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise LoadError("bad_metadata", f"line {line_no}: {err!r}", path) from err
            data_rel, videos = self._paths(index)
            task_list = row.get("tasks") or []
            refs.append(
                EpisodeRef(
                    format=FORMAT,
                    root=str(self.root),
                    path=str(self.root / data_rel),
                    index=index,
                    source=self.source,
                    locator={
                        "data": data_rel,
                        "length": length,
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
            vpath = root / ref.locator["videos"][key]
            check_video_span(vpath, 0, length, label)
            cameras[role] = FrameRef(
                kind="video", path=str(vpath), start=0, stop=length, fps=video_fps(info, key)
            )
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
