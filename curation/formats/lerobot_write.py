"""The writing loop LeRobot v2.1 and v3.0 share; the files each version writes stay in its module.

A write streams episodes through one :class:`LeRobotWrite`: :func:`start_write` checks the
target and reads the first episode (embodiment, fps and camera roles of the whole dataset);
:meth:`~LeRobotWrite.episodes` hands them out one at a time; per episode, :meth:`~LeRobotWrite.episode_rows` checks it against the first and builds its
frame rows, :meth:`~LeRobotWrite.camera_frames` decodes one camera at a time and
:meth:`~LeRobotWrite.add_stats` folds its statistics into the dataset's; :meth:`~LeRobotWrite.finish`
writes ``meta/info.json``, ``meta/stats.json`` and the source mapping. A failed write removes
what it created with :meth:`~LeRobotWrite.remove_partial`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.formats.lerobot_meta import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_REPO_ID,
    INDEX_FEATURES,
    INFO_PATH,
    STATS_PATH,
    camera_key_map,
    fps_value,
    frames_table,
    vector_features,
    video_feature,
)
from curation.formats.lerobot_stats import RunningStats, episode_stats, merge_stats
from curation.formats.mapping import SourceMapping
from curation.frames import decode_frames
from schemas import EmbodimentSpec, Episode, get_embodiment


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n")


def peek(episodes: Iterable[Episode]) -> tuple[Episode, Iterator[Episode]]:
    """The first episode and an iterator over all of them (consumes nothing twice)."""
    it = iter(episodes)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("no episodes to write") from None

    def chain() -> Iterator[Episode]:
        yield first
        yield from it

    return first, chain()


def source_name(repo_id: str, root: Path) -> str:
    """Source name stored in ``gwp_source.json``: the repo name, or the folder name for the
    default repo id (a name for people: episode ids derive from the dataset's content, not from it)."""
    return root.name if repo_id == DEFAULT_REPO_ID else repo_id.split("/")[-1]


def check_compatible(ep: Episode, first: Episode, roles: dict[str, str], where: str) -> None:
    """Every episode of a LeRobot dataset shares embodiment, fps and camera set."""
    ep.validate()
    if ep.embodiment != first.embodiment:
        raise ValueError(
            f"{where}: embodiment {ep.embodiment!r} differs from the dataset's {first.embodiment!r}"
        )
    if abs(ep.fps - first.fps) > 1e-6:
        raise ValueError(f"{where}: fps {ep.fps} differs from the dataset's {first.fps}")
    if set(ep.cameras) != set(roles):
        raise ValueError(f"{where}: cameras {sorted(ep.cameras)} differ from the dataset's {sorted(roles)}")


@dataclass
class LeRobotWrite:
    """One dataset being written: what its first episode fixed, and running totals."""

    root: Path
    first: Episode
    spec: EmbodimentSpec
    keys: dict[str, str]  # camera role -> feature key
    fmt: str  # reader format name recorded in the source mapping
    codec: str
    repo_id: str
    robot_type: str | None
    pending: Iterator[Episode]  # every episode, the first included, until episodes() hands them out
    chunks_size: int = DEFAULT_CHUNK_SIZE
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # feature key -> (H, W)
    tasks: dict[str, int] = field(default_factory=dict)  # instruction -> task_index
    totals: dict[str, RunningStats] = field(default_factory=dict)
    n_episodes: int = 0
    n_frames: int = 0

    def episodes(self, label: str, progress: bool) -> Iterator[tuple[int, Episode]]:
        """(episode index, episode) of every episode, with a tqdm bar ``label -> root`` when ``progress``."""
        stream = self.pending
        if progress:
            from tqdm import tqdm

            stream = tqdm(stream, desc=f"{label} -> {self.root}", unit="ep")
        return enumerate(stream)

    @property
    def fps(self) -> float:
        return float(self.first.fps)

    def episode_rows(self, ep_index: int, ep: Episode) -> pa.Table:
        """Check ``ep`` against the first episode and build its frame rows."""
        check_compatible(ep, self.first, self.keys, f"episode {ep_index} ({ep.episode_id})")
        task_index = self.tasks.setdefault(ep.instruction, len(self.tasks))
        return frames_table(ep, self.spec, ep_index, self.n_frames, task_index)

    def camera_frames(self, ep_index: int, ep: Episode) -> Iterator[tuple[str, np.ndarray]]:
        """(feature key, uint8 [T, H, W, 3]) per camera, decoded one at a time; a camera keeps
        one frame size across the dataset (info.json declares one shape per feature)."""
        for role, key in self.keys.items():
            fr = decode_frames(ep.cameras[role])
            size = (int(fr.shape[1]), int(fr.shape[2]))
            if self.shapes.setdefault(key, size) != size:
                raise ValueError(
                    f"episode {ep_index}: {key} frames are {size}, earlier ones {self.shapes[key]}"
                )
            yield key, fr

    def add_stats(
        self, ep: Episode, rows: pa.Table, frames: dict[str, np.ndarray]
    ) -> dict[str, RunningStats]:
        """Count ``ep`` as written; returns its own stats (merged into the dataset's)."""
        stats = episode_stats(ep, rows, frames)
        self.totals = merge_stats(self.totals, stats)
        self.n_frames += ep.length
        self.n_episodes += 1
        return stats

    def remove_partial(self) -> None:
        for sub in ("meta", "data", "videos"):  # ours: they did not exist before start_write
            shutil.rmtree(self.root / sub, ignore_errors=True)

    def finish(self, version: str, layout: dict[str, Any], data_path: str, video_path: str) -> Path:
        """Write info.json (``layout``: the version's own totals and sizes), stats.json and the mapping."""
        features = {
            **vector_features(self.spec),
            **{key: video_feature(*self.shapes[key], self.fps, self.codec) for key in self.keys.values()},
            **INDEX_FEATURES,
        }
        info = {
            "codebase_version": version,
            "robot_type": self.robot_type or self.spec.name,
            "total_episodes": self.n_episodes,
            "total_frames": self.n_frames,
            "total_tasks": len(self.tasks),
            **layout,
            "fps": fps_value(self.fps),
            "splits": {"train": f"0:{self.n_episodes}"},
            "data_path": data_path,
            "video_path": video_path if self.keys else None,
            "features": features,
        }
        write_json(self.root / INFO_PATH, info)
        write_json(self.root / STATS_PATH, {k: v.to_dict() for k, v in self.totals.items()})
        SourceMapping(
            embodiment=self.spec.name,
            cameras={key: role for role, key in self.keys.items()},
            source=source_name(self.repo_id, self.root),
            extra={"repo_id": self.repo_id, "format": self.fmt},
        ).write(self.root)
        return self.root


def start_write(
    episodes: Iterable[Episode],
    root: str | Path,
    fmt: str,
    *,
    codec: str,
    camera_keys: dict[str, str] | None,
    repo_id: str,
    robot_type: str | None,
) -> LeRobotWrite:
    """Check that ``root`` holds no dataset yet and read the first episode (which fixes
    embodiment, fps and camera roles for all); :meth:`LeRobotWrite.episodes` hands out all of them."""
    root = Path(root)
    if (root / "meta").exists() or (root / "data").exists():
        raise FileExistsError(f"{root} already holds a dataset (meta/ or data/ exists)")
    first, stream = peek(episodes)
    spec = get_embodiment(first.embodiment)
    keys = camera_key_map(spec, first.cameras, camera_keys)
    return LeRobotWrite(root, first, spec, keys, fmt, codec, repo_id, robot_type, stream)
