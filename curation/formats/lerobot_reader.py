"""The reader LeRobot v3.0 and v2.1 share: parquet rows + video spans back into a validated Episode.

v3.0 packs many episodes per parquet and per mp4; v2.1 has one of each per episode. Both
readers list their episodes from their own metadata and hand :class:`LeRobotReader` one
:class:`~curation.formats.base.EpisodeRef` each; :meth:`LeRobotReader.load` reads the
episode's rows (a v3.0 data file once per process, :func:`read_episode_rows`), asks the
version for its camera spans (:meth:`LeRobotReader.frame_ref`) and builds the Episode through
:func:`build_episode`, which maps every problem to a
:class:`~curation.formats.base.LoadError` with a reason code naming file and episode. The
format's names and ``meta/info.json`` are :mod:`curation.formats.lerobot_meta`.
"""

from __future__ import annotations

import functools
import json
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.formats.base import EpisodeRef, SourceReader, file_version
from curation.formats.episodes import finish_episode
from curation.formats.lerobot_meta import INFO_PATH, read_info
from curation.formats.mapping import SourceMapping
from curation.video import check_timestamps, probe_video
from schemas import EmbodimentSpec, Episode, FrameRef, get_embodiment
from schemas.errors import LoadError


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
    return finish_episode(  # its own checks pass by now: the shared build and schema check
        path=path,
        label=label,
        source=source,
        episode_id=episode_id,
        index=int(episode_index),
        embodiment=spec.name,
        instruction=instruction,
        fps=fps,
        state=state,
        action=action,
        cameras=cameras,
        timestamps=timestamps,
    )


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
