"""What LeRobot v3.0 and v2.1 share: path templates, feature declarations, statistics,
and the code that turns parquet rows back into a validated :class:`~schemas.Episode`.

The format (public, ``huggingface/lerobot``) in brief:

* ``meta/info.json`` declares every column as a *feature* ``{dtype, shape, names}``; camera
  streams are ``dtype: "video"`` features stored as mp4 files (``shape [H, W, 3]``, codec
  details under ``info``). ``fps`` is the one frame rate of the dataset.
* Data parquet rows are frames: ``observation.state``, ``action`` (fixed-size float32
  lists), ``timestamp`` (float32 seconds from the episode start, ``frame_index / fps``),
  ``frame_index``, ``episode_index``, ``index`` (global frame number), ``task_index``.
* Statistics per feature: ``min``, ``max``, ``mean``, ``std``, ``count``; for videos per
  channel, shape ``[3, 1, 1]``, on pixel values scaled to ``[0, 1]``.

v3.0 packs many episodes per parquet and per mp4; v2.1 has one of each per episode. Both
readers build Episodes through :func:`build_episode`, which maps every problem to a
:class:`~curation.formats.base.LoadError` with a reason code naming file and episode.
"""

from __future__ import annotations

import functools
import json
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef, SourceReader, file_version
from curation.formats.mapping import SourceMapping
from curation.video import check_timestamps, probe_video
from schemas import EmbodimentSpec, Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError

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
_IMAGE_STATS_MAX_FRAMES = 64  # frames sampled per episode for the per-channel image stats


# ---- writing helpers ----------------------------------------------------------------------


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


# ---- statistics ---------------------------------------------------------------------------


@dataclass
class RunningStats:
    """Mergeable min / max / mean / std / count of one feature (per dim, or per channel)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None  # sum of squared deviations (Chan et al. parallel update)
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    shape: tuple[int, ...] = field(default_factory=tuple)
    per_item: int = 1  # rows per counted item: pixels per frame for images (LeRobot counts frames)

    @classmethod
    def of(cls, x_ND: np.ndarray, shape: tuple[int, ...] | None = None, per_item: int = 1) -> RunningStats:
        x = np.asarray(x_ND, np.float64)
        mean = x.mean(0)
        return cls(
            count=int(x.shape[0]),
            mean=mean,
            m2=((x - mean) ** 2).sum(0),
            min=x.min(0),
            max=x.max(0),
            shape=shape or tuple(mean.shape),
            per_item=per_item,
        )

    def merge(self, other: RunningStats) -> RunningStats:
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        return RunningStats(
            count=n,
            mean=self.mean + delta * other.count / n,
            m2=self.m2 + other.m2 + delta**2 * self.count * other.count / n,
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
            shape=self.shape,
            per_item=self.per_item,
        )

    def to_dict(self) -> dict[str, list]:
        def shaped(a: np.ndarray) -> list:
            return np.asarray(a, np.float64).reshape(self.shape).tolist()

        return {
            "min": shaped(self.min),
            "max": shaped(self.max),
            "mean": shaped(self.mean),
            "std": shaped(np.sqrt(self.m2 / max(self.count, 1))),
            "count": [self.count // self.per_item],
        }


def image_stats(frames_THWC: np.ndarray) -> RunningStats:
    """Per-channel stats on pixels in [0, 1], from at most 64 frames and ~100 px per side."""
    t, h, w, _ = frames_THWC.shape
    step_t = max(1, t // _IMAGE_STATS_MAX_FRAMES)
    step_s = max(1, max(h, w) // 100)
    sampled = frames_THWC[::step_t, ::step_s, ::step_s]
    px = sampled.reshape(-1, 3).astype(np.float64) / 255.0
    return RunningStats.of(px, shape=(3, 1, 1), per_item=sampled.shape[1] * sampled.shape[2])


def episode_stats(ep: Episode, rows: pa.Table, frames: dict[str, np.ndarray]) -> dict[str, RunningStats]:
    """Stats of every feature of one episode (``frames``: feature key -> uint8 [T, H, W, 3])."""
    out = {
        STATE_KEY: RunningStats.of(ep.state),
        ACTION_KEY: RunningStats.of(ep.action),
    }
    for name in INDEX_FEATURES:
        out[name] = RunningStats.of(rows.column(name).to_numpy().reshape(-1, 1))
    for key, fr in frames.items():
        out[key] = image_stats(fr)
    return out


def merge_stats(total: dict[str, RunningStats], new: dict[str, RunningStats]) -> dict[str, RunningStats]:
    return {k: total[k].merge(v) if k in total else v for k, v in new.items()}


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


DEFAULT_REPO_ID = "local/dataset"


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


# ---- reading helpers ----------------------------------------------------------------------


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


def mapped_cameras(info: dict[str, Any], mapping: SourceMapping, where: Path) -> dict[str, str]:
    """Feature key -> role for the mapped cameras; a mapped key absent from info.json is an error."""
    features = info["features"]
    out = {}
    for key, role in mapping.cameras.items():
        if key not in features:
            raise LoadError("missing_camera", f"mapped camera key {key!r} not among the features", where)
        if features[key].get("dtype") not in ("video",):
            raise LoadError(
                "unsupported_feature", f"{key!r} has dtype {features[key].get('dtype')!r}; only video", where
            )
        out[key] = role
    return out


def video_fps(info: dict[str, Any], key: str) -> float:
    vinfo = info["features"][key].get("info") or {}
    return float(vinfo.get("video.fps") or info["fps"])


def read_episode_rows(path: Path, columns: list[str], episode_index: int, label: str) -> pa.Table:
    """The rows of one episode from a data parquet, in ``frame_index`` order.

    A v3.0 data file holds many episodes; the needed columns of the file are read once per
    process (:func:`_data_file`) and each episode is a slice of them, so loading every episode
    of a file costs one read, not one read per episode (whose cost grows with the file;
    BENCHMARKS.md, "Measurements behind the code")."""
    if not path.exists():
        raise LoadError("missing_file", "data parquet not found", path, label)
    try:
        data = _data_file(*file_version(path), tuple(columns))
    except LoadError as err:  # the file's problem, named for this episode
        raise LoadError(err.reason, err.detail, path, label) from None
    lo, hi = np.searchsorted(data.episodes, [episode_index, episode_index + 1])
    return data.table.take(pa.array(data.order[lo:hi]))


@dataclass(frozen=True)
class _DataFile:
    table: pa.Table  # the needed columns, file order
    order: np.ndarray  # row positions sorted by (episode_index, frame_index)
    episodes: np.ndarray  # episode_index of each row in that order


@functools.lru_cache(maxsize=2)
def _data_file(path: str, size: int, mtime_ns: int, columns: tuple[str, ...]) -> _DataFile:
    """One data parquet's columns, read once per file version and process (two files kept)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise LoadError("bad_parquet", f"cannot read: {err}", path) from err
    for col in [*columns, "episode_index"]:
        if col not in schema.names:
            raise LoadError("missing_column", f"column {col!r} not in {schema.names}", path)
    extra = [c for c in ("episode_index", "frame_index") if c in schema.names and c not in columns]
    try:
        table = pq.read_table(path, columns=[*columns, *extra])
    except (OSError, pa.ArrowInvalid) as err:
        raise LoadError("bad_parquet", f"cannot read: {err}", path) from err
    episodes = table.column("episode_index").to_numpy(zero_copy_only=False)
    frames = (
        table.column("frame_index").to_numpy(zero_copy_only=False)
        if "frame_index" in table.column_names
        else np.zeros(len(episodes), np.int64)
    )
    order = np.lexsort((frames, episodes))  # stable: rows of equal keys keep file order
    return _DataFile(table.select(list(columns)), order, episodes[order])


def vector_column(table: pa.Table, key: str, dim: int, path: Path, label: str) -> np.ndarray:
    """``[T, dim]`` float32 from a list / fixed-size-list column (or a scalar column when dim 1)."""
    col = table.column(key).combine_chunks()
    if (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        lengths = (
            col.value_lengths().to_numpy(zero_copy_only=False)
            if not pa.types.is_fixed_size_list(col.type)
            else None
        )
        if col.null_count:
            raise LoadError("null_value", f"{key} has {col.null_count} null row(s)", path, label)
        if lengths is not None and len(lengths) and (lengths != dim).any():
            raise LoadError(
                "bad_shape",
                f"{key} rows have {sorted(set(lengths.tolist()))} values, want {dim}",
                path,
                label,
            )
        flat = col.flatten().to_numpy(zero_copy_only=False)
    else:
        flat = col.to_numpy(zero_copy_only=False)
    try:
        return np.asarray(flat, np.float32).reshape(len(table), dim)
    except ValueError as err:
        raise LoadError(
            "bad_shape", f"{key}: cannot shape {flat.size} values as [{len(table)}, {dim}]", path, label
        ) from err


def check_video_span(path: Path, start: int, stop: int, label: str) -> None:
    """The mp4 exists, decodes as a video and holds frames ``[start, stop)`` (header only)."""
    try:
        info = probe_video(path)
    except LoadError as err:
        raise LoadError(err.reason, err.detail, path, label) from err
    if stop > info.num_frames:
        raise LoadError(
            "video_too_short", f"needs frames [{start}, {stop}) but has {info.num_frames}", path, label
        )


def build_episode(
    *,
    rows: pa.Table,
    spec: EmbodimentSpec,
    mapping: SourceMapping,
    episode_id: str,
    source: str,
    instruction: str,
    fps: float,
    cameras: dict[str, FrameRef],
    path: Path,
    label: str,
    episode_index: int,
    expected_length: int | None,
) -> Episode:
    """Rows + frame refs -> a validated Episode, or a LoadError with a reason code."""
    t = len(rows)
    if t == 0:
        raise LoadError("empty_episode", "no rows for this episode", path, label)
    if expected_length is not None and expected_length != t:
        raise LoadError(
            "length_mismatch", f"metadata says {expected_length} frames, parquet has {t}", path, label
        )
    state = vector_column(rows, mapping.state_key, spec.state_dim, path, label)
    action = vector_column(rows, mapping.action_key, spec.action_dim, path, label)
    for name, arr in (("action", action), ("state", state)):
        bad = ~np.isfinite(arr)
        if bad.any():
            step = int(np.argwhere(bad)[0][0])
            raise LoadError(
                f"nan_{name}", f"{int(bad.sum())} NaN/inf value(s), first at step {step}", path, label
            )
    ts = rows.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in rows.column_names else None
    timestamps = ts - ts[0] if ts is not None else np.arange(t, dtype=np.float64) / fps
    for role, ref in cameras.items():
        if ref.num_frames != t:
            raise LoadError(
                "length_mismatch",
                f"camera {role} spans {ref.num_frames} frames, parquet has {t}",
                ref.path,
                label,
            )
    ep = Episode(
        episode_id=episode_id,
        source=source,
        embodiment=spec.name,
        instruction=instruction,
        fps=float(fps),
        state=state,
        action=action,
        timestamps=timestamps,
        cameras=cameras,
        source_path=str(path),
        source_index=int(episode_index),
    )
    try:
        return ep.validate()
    except SchemaError as err:
        raise LoadError("invalid_episode", str(err), path, label) from err


def spec_for(mapping: SourceMapping, where: Path) -> EmbodimentSpec:
    try:
        return get_embodiment(mapping.embodiment)
    except KeyError as err:
        raise LoadError("unknown_embodiment", err.args[0], where) from None


def check_vector_features(
    info: dict[str, Any], mapping: SourceMapping, spec: EmbodimentSpec, where: Path
) -> None:
    """The mapped state/action features exist and have the embodiment's dims."""
    for key, dim in ((mapping.state_key, spec.state_dim), (mapping.action_key, spec.action_dim)):
        feat = info["features"].get(key)
        if feat is None:
            raise LoadError("missing_column", f"feature {key!r} not declared in meta/info.json", where)
        shape = list(feat.get("shape") or [])
        if shape and int(np.prod(shape)) != dim:
            raise LoadError("bad_shape", f"{key} has shape {shape}, {spec.name} needs {dim}", where)


class LeRobotReader(SourceReader):
    """What the v2.x and v3.0 readers share: detection by ``codebase_version``, ``info.json``,
    the episode refs and :meth:`load`; a version supplies its camera spans (:meth:`frame_ref`)."""

    major: ClassVar[str]  # "v2" or "v3"

    def __init__(self, root: str | Path, mapping: SourceMapping | None = None, source: str | None = None):
        super().__init__(root, mapping, source)
        self._info: dict[str, Any] | None = None

    @classmethod
    def detect(cls, root: Path) -> bool:
        path = Path(root) / INFO_PATH
        if not path.is_file():
            return False
        try:
            return str(json.loads(path.read_text()).get("codebase_version", "")).startswith(cls.major)
        except (OSError, json.JSONDecodeError, AttributeError):
            return False

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = read_info(self.root, self.major)
        return self._info

    def mapped_cameras(self) -> dict[str, str]:
        """Check the mapped state/action features; feature key -> role of the mapped cameras."""
        where = self.root / INFO_PATH
        check_vector_features(self.info, self.mapping, spec_for(self.mapping, where), where)
        return mapped_cameras(self.info, self.mapping, where)

    def episode_ref(
        self, index: int, data_rel: str, length: int, tasks: list[str] | None, videos: dict[str, Any]
    ) -> EpisodeRef:
        """The ref :meth:`load` reads: the data parquet, length, instruction and camera ``videos``."""
        return EpisodeRef(
            format=self.format,
            root=str(self.root),
            path=str(self.root / data_rel),
            index=index,
            source=self.source,
            locator={
                "data": data_rel,
                "length": length,
                "instruction": tasks[0] if tasks else self.mapping.instruction,
                "videos": videos,
            },
        )

    @abstractmethod
    def frame_ref(
        self, root: Path, key: str, video: Any, length: int, label: str, timestamps: np.ndarray | None
    ) -> FrameRef:
        """Camera ``key``'s frames of one episode from its locator entry ``video``, checked: step
        ``i``'s frame is the one presented at ``timestamps[i]`` (the data's ``timestamp``
        column; None: ``i / fps``) on the episode's clock."""

    def load(self, ref: EpisodeRef) -> Episode:
        info = self.info
        root = Path(ref.root)
        path = root / ref.locator["data"]
        label = f"episode_{ref.index:06d}"
        if "duplicate" in ref.locator:
            where = ref.locator["duplicate"]
            raise LoadError("duplicate_episode_index", where["detail"], root / where["file"], label)
        spec = spec_for(self.mapping, path)
        cams = mapped_cameras(info, self.mapping, root / INFO_PATH)
        columns = [self.mapping.state_key, self.mapping.action_key, "timestamp", "frame_index"]
        rows = read_episode_rows(path, columns, ref.index, label)
        length = int(ref.locator["length"])
        timestamps = None
        if "timestamp" in rows.column_names and len(rows) == length:  # else build_episode names the count
            timestamps = rows.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
            check_timestamps(timestamps, path, label)
        cameras = {
            role: self.frame_ref(root, key, ref.locator["videos"][key], length, label, timestamps)
            for key, role in cams.items()
        }
        return build_episode(
            rows=rows,
            spec=spec,
            mapping=self.mapping,
            episode_id=self.episode_id(ref, ref.locator["data"], ref.index),
            source=ref.source,
            instruction=ref.locator["instruction"],
            fps=float(info["fps"]),
            cameras=cameras,
            path=path,
            label=label,
            episode_index=ref.index,
            expected_length=length,
        )


def mark_duplicates(refs: list[EpisodeRef], rows: list[str], meta_file: list[str]) -> list[EpisodeRef]:
    """Refs whose ``episode_index`` appears more than once in the episodes metadata, each marked
    so that :meth:`LeRobotReader.load` ledgers it (``duplicate_episode_index``): which of them is
    the episode is unknowable, and keeping one would drop the other silently. ``rows[i]`` names
    where ref ``i`` was listed (e.g. ``row 3``), ``meta_file[i]`` the file, relative to the root."""
    where: dict[int, list[str]] = {}
    for ref, row, file in zip(refs, rows, meta_file, strict=True):
        where.setdefault(ref.index, []).append(f"{file} {row}")
    out = []
    for ref, row, file in zip(refs, rows, meta_file, strict=True):
        places = where[ref.index]
        if len(places) > 1:
            listed = ", ".join(places)
            detail = f"episode_index {ref.index} is listed {len(places)} times ({listed}); this is {row}"
            ref = EpisodeRef(
                ref.format,
                ref.root,
                ref.path,
                ref.index,
                ref.source,
                {**ref.locator, "duplicate": {"file": file, "detail": detail}},
            )
        out.append(ref)
    return out
