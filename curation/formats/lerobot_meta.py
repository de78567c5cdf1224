"""LeRobot v3.0 / v2.1 metadata: the format's file names, feature declarations and ``meta/info.json``.

The format (public, ``huggingface/lerobot``) in brief:

* ``meta/info.json`` declares every column as a *feature* ``{dtype, shape, names}``; camera
  streams are ``dtype: "video"`` features stored as mp4 files (``shape [H, W, 3]``, codec
  details under ``info``). ``fps`` is the one frame rate of the dataset.
* Data parquet rows are frames: ``observation.state``, ``action`` (fixed-size float32
  lists), ``timestamp`` (float32 seconds from the episode start, ``frame_index / fps``),
  ``frame_index``, ``episode_index``, ``index`` (global frame number), ``task_index``.

Design: everything both versions and both directions name lives here once — path templates,
feature dicts and the frame-row schema the writers declare, and :func:`read_info`, the checked
read of ``meta/info.json`` that the readers and ``gwp inspect`` share. Statistics are
:mod:`curation.formats.lerobot_stats`, the shared reader :mod:`curation.formats.lerobot_reader`,
the shared writing loop :mod:`curation.formats.lerobot_write`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.formats.base import LoadError
from schemas import EmbodimentSpec, Episode

# ---- path templates (the format's own names) -------------------------------------------
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder

V3_CODEBASE_VERSION = "v3.0"
V3_CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
V3_DATA_PATH = "data/" + V3_CHUNK_FILE + ".parquet"
V3_VIDEO_PATH = "videos/{video_key}/" + V3_CHUNK_FILE + ".mp4"
V3_EPISODES_PATH = "meta/episodes/" + V3_CHUNK_FILE + ".parquet"
V3_TASKS_PATH = "meta/tasks.parquet"

V2_CODEBASE_VERSION = "v2.1"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V2_EPISODES_PATH = "meta/episodes.jsonl"
V2_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
V2_TASKS_PATH = "meta/tasks.jsonl"

STATE_KEY = "observation.state"
ACTION_KEY = "action"
CAMERA_KEY_PREFIX = "observation.images."
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

DEFAULT_REPO_ID = "local/dataset"


# ---- feature declarations and frame rows ------------------------------------------------------------------


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: ``chunks_size`` files per chunk folder."""
    return (chunk_index + 1, 0) if file_index + 1 >= chunks_size else (chunk_index, file_index + 1)


def camera_key_map(
    spec: EmbodimentSpec, roles: Iterable[str], camera_keys: dict[str, str] | None
) -> dict[str, str]:
    """Camera role -> feature key, in the embodiment's role order (default ``observation.images.<role>``)."""
    camera_keys = dict(camera_keys or {})
    unknown = set(camera_keys) - set(spec.cameras)
    if unknown:
        raise ValueError(
            f"camera_keys names roles {sorted(unknown)} not in {spec.name}'s {list(spec.cameras)}"
        )
    present = set(roles)
    out = {r: camera_keys.get(r, CAMERA_KEY_PREFIX + r) for r in spec.cameras if r in present}
    if len(set(out.values())) != len(out):
        raise ValueError(f"two camera roles map to one feature key: {out}")
    for key in out.values():
        if "/" in key:
            raise ValueError(f"feature key {key!r} must not contain '/'")
    return out


def video_feature(height: int, width: int, fps: float, codec: str) -> dict[str, Any]:
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps_value(fps),
            "video.channels": 3,
            "has_audio": False,
        },
    }


def vector_features(spec: EmbodimentSpec) -> dict[str, dict[str, Any]]:
    return {
        STATE_KEY: {"dtype": "float32", "shape": [spec.state_dim], "names": list(spec.state_names)},
        ACTION_KEY: {"dtype": "float32", "shape": [spec.action_dim], "names": list(spec.action_names)},
    }


def fps_value(fps: float) -> int | float:
    """LeRobot stores fps as an int; keep a fractional rate as a float rather than lose it."""
    return round(fps) if abs(fps - round(fps)) < 1e-6 else float(fps)


def frames_schema(spec: EmbodimentSpec) -> pa.Schema:
    return pa.schema(
        [
            (STATE_KEY, pa.list_(pa.float32(), spec.state_dim)),
            (ACTION_KEY, pa.list_(pa.float32(), spec.action_dim)),
            ("timestamp", pa.float32()),
            ("frame_index", pa.int64()),
            ("episode_index", pa.int64()),
            ("index", pa.int64()),
            ("task_index", pa.int64()),
        ]
    )


def frames_table(
    ep: Episode, spec: EmbodimentSpec, episode_index: int, first_index: int, task_index: int
) -> pa.Table:
    """One episode's rows. ``timestamp`` is ``frame_index / fps``: the video clock."""
    t = ep.length
    frame_index = np.arange(t, dtype=np.int64)
    cols = {
        STATE_KEY: pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(ep.state, np.float32).reshape(-1)), spec.state_dim
        ),
        ACTION_KEY: pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(ep.action, np.float32).reshape(-1)), spec.action_dim
        ),
        "timestamp": pa.array((frame_index / ep.fps).astype(np.float32)),
        "frame_index": pa.array(frame_index),
        "episode_index": pa.array(np.full(t, episode_index, np.int64)),
        "index": pa.array(np.arange(first_index, first_index + t, dtype=np.int64)),
        "task_index": pa.array(np.full(t, task_index, np.int64)),
    }
    return pa.table(cols, schema=frames_schema(spec))


# ---- meta/info.json ------------------------------------------------------------------------


def read_info(root: Path, want_version: str) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.exists():
        raise LoadError("missing_file", "meta/info.json not found", path)
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LoadError("bad_metadata", f"cannot parse: {err}", path) from err
    version = str(info.get("codebase_version", ""))
    if not version.startswith(want_version):
        raise LoadError(
            "unsupported_version", f"codebase_version {version!r}, expected {want_version}.x", path
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise LoadError("bad_metadata", f"missing field {key!r}", path)
    if not isinstance(info["fps"], (int, float)) or info["fps"] <= 0:
        raise LoadError("bad_metadata", f"fps must be a positive number, got {info['fps']!r}", path)
    return info


def video_fps(info: dict[str, Any], key: str) -> float:
    vinfo = info["features"][key].get("info") or {}
    return float(vinfo.get("video.fps") or info["fps"])
