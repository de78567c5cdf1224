"""One episode stream from many sources, in-process or on Ray Data.

Two stages, each a pure function so it can be tested without Ray:

* ``discover(spec)``  source → episode references            (1:N, cheap, metadata only)
* ``load(ref)``       reference → Episode, or a Rejection      (1:1, runs in the workers)

``discover_sources(folder)`` turns a folder of datasets into one SourceSpec per dataset.
``load`` stays cheap (readers check headers, never decode); with ``decode=True`` it also
decodes every frame, and a video that only fails then (data cut behind an intact header)
is rejected at stage ``"decode"``.

Every input ends up as exactly one Episode or one Rejection: a source that cannot be
listed at all (unknown layout, unreadable folder) is one rejected input, an episode that
fails to load or validate is one rejected input. Nothing raises out of a worker and
nothing is dropped, so ``inputs = episodes + rejections`` always holds.

The same dataset given twice (the same path twice, or a byte-identical copy at another
path: the same ``dataset_id``, :mod:`curation.formats.fingerprint`) is read once, from its
first appearance; each later copy is *one* rejected input, like an unlistable source, with
stage ``"discover"``, reason ``"duplicate_source"`` and a detail naming the first copy. Its
episodes are not inputs: they are the first copy's, which count once. So the balance holds
with the copy counted as one input.

Rows on the Ray path are StreamItem rows (:data:`STREAM_ITEM_SCHEMA`): ``kind`` plus either
an Episode row or a Rejection row, so downstream stages can split the ledger off with one
``filter``. Every block is built against that schema, never inferred from Python rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.formats import FORMATS, EpisodeRef, LoadError, SourceMapping, detect_format, reader_class
from curation.formats.base import SourceReader
from curation.formats.mapping import SIDECAR_NAME
from schemas import Episode, FrameRef, Rejection, SchemaError, get_embodiment


@dataclass(frozen=True)
class SourceSpec:
    """One input source: a folder or file, its format (auto-detected if None) and key mapping."""

    path: str
    format: str | None = None
    mapping: dict[str, Any] | None = None  # SourceMapping fields; None = the sidecar in the source
    name: str | None = None
    embodiment: str | None = None  # the robot, for a source mapped by its format's conventions

    @classmethod
    def coerce(cls, value: str | Path | dict | SourceSpec) -> SourceSpec:
        if isinstance(value, SourceSpec):
            return value
        if isinstance(value, (str, Path)):
            return cls(path=str(value))
        allowed = {"path", "format", "mapping", "name", "embodiment"}
        unknown = set(value) - allowed
        if unknown:
            raise ValueError(
                f"source entry: unknown field {sorted(unknown)[0]!r}; allowed: {sorted(allowed)}"
            )
        return cls(**value)

    def to_row(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format or "",
            "mapping": json.dumps(self.mapping or {}),
            "name": self.name or "",
            "embodiment": self.embodiment or "",
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SourceSpec:
        mapping = json.loads(row["mapping"]) or None
        embodiment = row.get("embodiment") or None
        return cls(row["path"], row["format"] or None, mapping, row["name"] or None, embodiment)


@lru_cache(maxsize=64)
def _reader(fmt: str, root: str, mapping_json: str, name: str, sidecar: str = "") -> SourceReader:
    """Readers are cached per worker process: opening one may parse a whole metadata table.
    ``sidecar`` (:func:`_sidecar_stamp`) makes a written, edited or removed gwp_source.json a new key."""
    mapping = (
        SourceMapping.from_dict(json.loads(mapping_json), where=f"{root}: mapping", fmt=fmt)
        if mapping_json
        else None
    )
    return reader_class(fmt)(root, mapping=mapping, source=name or None)


def _rejection(err: Exception, stage: str, path: str, episode: str, source: str) -> Rejection:
    if isinstance(err, LoadError):
        rej = err.to_rejection(stage, source)
        return rej if err.episode else Rejection(rej.stage, rej.reason, rej.path, episode, rej.detail, source)
    if isinstance(err, SchemaError):
        reason = "nan_or_inf" if "NaN" in err.problem else f"invalid_{err.field.split('[')[0]}"
        return Rejection(stage, reason, path, episode, str(err), source)
    if isinstance(err, PermissionError):
        return Rejection(stage, "unreadable", path, episode, str(err), source)
    return Rejection(stage, "unexpected_error", path, episode, f"{type(err).__name__}: {err}", source)


def discover(
    spec: SourceSpec, seen: dict[str, str] | None = None
) -> tuple[list[EpisodeRef], list[Rejection]]:
    """List the episodes of one source; an unlistable source becomes one Rejection, and so
    does a source whose mapping maps no camera (every episode would fail curation later).

    ``seen`` (dataset id -> path of the copy listed first, updated here) makes a source whose
    dataset was already listed one ``duplicate_source`` Rejection instead of its episodes."""
    mapping_json = json.dumps(spec.mapping) if spec.mapping else ""
    name = spec.name or Path(spec.path).stem  # the reader's default source name
    try:
        fmt = spec.format or detect_format(spec.path)
        mapping_json = resolved_mapping_json(spec, fmt, mapping_json)
        reader = _reader(
            fmt, spec.path, mapping_json, spec.name or "", _sidecar_stamp(spec.path, fmt, mapping_json)
        )
        check_mapping(reader, spec, fmt)
        refs = reader.refs()  # fingerprints the dataset as it is now (the reader is cached)
        dataset_id = reader.dataset_id
        if seen is not None and dataset_id in seen:
            return [], [duplicate_rejection(spec.path, name, dataset_id, seen[dataset_id])]
    except Exception as err:  # every failure goes to the ledger
        return [], [_rejection(err, "discover", spec.path, f"{Path(spec.path).name}#*", name)]
    if seen is not None:
        seen[dataset_id] = spec.path
    return [_with_mapping(ref, mapping_json) for ref in refs], []


def duplicate_rejection(path: str, source: str, dataset_id: str, first: str) -> Rejection:
    """The ledger line of a source whose dataset is already an input (see the module docstring)."""
    same = "given twice" if Path(path).resolve() == Path(first).resolve() else f"a copy of {first}"
    return Rejection(
        "discover",
        "duplicate_source",
        path,
        f"{Path(path).name}#*",
        f"the same dataset (id {dataset_id}) {same}: its episodes are read once, from {first}",
        source,
    )


def _dataset_id_or_none(spec: SourceSpec) -> str | None:
    """The source's dataset id, or None when it cannot be opened (its listing task reports why)."""
    try:
        fmt = spec.format or detect_format(spec.path)
        mapping_json = resolved_mapping_json(spec, fmt, json.dumps(spec.mapping) if spec.mapping else "")
        stamp = _sidecar_stamp(spec.path, fmt, mapping_json)
        return _reader(fmt, spec.path, mapping_json, spec.name or "", stamp).fingerprint()
    except Exception:  # the listing task turns the same failure into a rejection
        return None


def resolved_mapping_json(spec: SourceSpec, fmt: str, mapping_json: str) -> str:
    """The mapping as JSON, resolved on the driver when ``--embodiment`` names the robot (the
    workers must read with that robot too: the resolved mapping travels in each ref)."""
    if spec.embodiment and not mapping_json:
        mapping = SourceMapping.for_source(_mapping_root(spec.path, fmt), fmt, spec.embodiment)
        return json.dumps(mapping.to_dict())
    return mapping_json


def _sidecar_stamp(path: str, fmt: str, mapping_json: str) -> str:
    """Size and mtime of the source's gwp_source.json ("" if absent, or if the mapping is given)."""
    if mapping_json:
        return ""
    try:
        st = SourceMapping.sidecar_path(_mapping_root(path, fmt)).stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def _mapping_root(path: str, fmt: str) -> Path:
    """The folder or file a source's sidecar belongs to (RLDS: the version folder)."""
    if fmt == "rlds":
        from curation.formats.rlds_layout import version_folder

        return version_folder(Path(path)) or Path(path)
    return Path(path)


def check_mapping(reader: SourceReader, spec: SourceSpec, fmt: str) -> None:
    """Refuse a mapping that maps no camera (raw video names its cameras by role in the files,
    so an empty ``cameras`` is its normal case) or names a robot other than ``--embodiment``.
    The LoadError names the mapping's file (the thing to fix), or the source for a config mapping."""
    if spec.mapping:
        where, which = Path(spec.path), "the mapping given in the config"
    else:
        where, which = SourceMapping.sidecar_path(_mapping_root(spec.path, fmt)), "the mapping"
    mapping = reader.mapping
    if spec.embodiment and mapping.embodiment != spec.embodiment:
        raise LoadError(
            "embodiment_conflict",
            f"{which} names embodiment {mapping.embodiment!r}, --embodiment says {spec.embodiment!r}",
            where,
        )
    if not mapping.cameras and fmt != "raw_video":
        raise LoadError(
            "no_camera",
            f'{which} maps no camera; add "cameras": {{source key: role}} with roles from '
            f"{list(get_embodiment(mapping.embodiment).cameras)} (`gwp inspect {spec.path}` lists the keys)",
            where,
        )


def _is_dataset(path: Path) -> bool:
    """Some format's ``detect`` accepts ``path`` (one or several: ambiguity is discover's to report)."""
    return any(reader_class(fmt).detect(path) for fmt in FORMATS)


def discover_sources(folder: str | Path, *, max_depth: int = 2) -> list[SourceSpec]:
    """One SourceSpec per dataset in ``folder``: each child that is one, in name order.

    A child folder that no format accepts is searched ``max_depth`` levels further for
    datasets (TFDS/RLDS keeps its episodes in ``<name>/<version>/``); if none is found the
    child itself is listed, so that ``discover`` turns it into an ``unknown_layout``
    rejection instead of it vanishing. Hidden entries and mapping sidecars
    (``<file>.gwp_source.json``, read by the reader of ``<file>``) are not sources.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of sources")

    def found_below(path: Path, depth: int) -> list[Path]:
        if _is_dataset(path):
            return [path]
        if depth == 0 or not path.is_dir():
            return []
        return [hit for child in _children(path) for hit in found_below(child, depth - 1)]

    specs = []
    for child in _children(folder):
        hits = [child] if _is_dataset(child) else found_below(child, max_depth) if child.is_dir() else []
        specs += [SourceSpec(path=str(p)) for p in hits or [child]]
    return specs


def _children(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(SIDECAR_NAME)
    )


def _with_mapping(ref: EpisodeRef, mapping_json: str) -> EpisodeRef:
    if not mapping_json:
        return ref
    return replace(ref, locator={**ref.locator, "_mapping": mapping_json})


def load(ref: EpisodeRef, *, decode: bool = False) -> Episode | Rejection:
    """Load and validate one episode; ``decode`` materialises its frames (in the worker).

    Loading is cheap: readers check video headers (does the file exist, open, hold enough
    frames) but never decode. A video whose header is intact but whose data is cut or
    corrupt is therefore only caught with ``decode=True``; its rejection has stage
    ``"decode"`` and names the episode by id (it loaded, so it has one).
    """
    mapping_json = ref.locator.get("_mapping", "")
    try:
        name = ref.source if mapping_json else ""
        reader = _reader(
            ref.format, ref.root, mapping_json, name, _sidecar_stamp(ref.root, ref.format, mapping_json)
        )
        episode = reader.load(ref)
        if not reader.mapping.actions:  # the mapping drops them: curated as action-free video
            episode = episode.without_actions()
        episode = episode.validate()
    except Exception as err:  # every failure goes to the ledger
        return _rejection(err, "load", ref.path, ref.label, ref.source)
    if not decode:
        return episode
    try:
        return decode_episode(episode)
    except Exception as err:
        rej = _rejection(err, "decode", ref.path, episode.episode_id, ref.source)
        return Rejection(
            rej.stage, rej.reason, rej.path, rej.episode, f"{ref.label}: {rej.detail}", rej.source
        )


def decode_episode(episode: Episode) -> Episode:
    """The same episode with every camera's frames decoded inline; LoadError names file and camera."""
    from curation.frames import decode_frames

    cams = {}
    for role, ref in episode.cameras.items():
        where = ref.path or episode.source_path
        try:
            frames = decode_frames(ref)
        except LoadError as err:
            raise LoadError(err.reason, f"camera {role}: {err.detail}", err.path, episode.episode_id) from err
        if frames.shape[0] != episode.length:
            raise LoadError(
                "frame_count_mismatch",
                f"camera {role}: decoded {frames.shape[0]} frames, episode has {episode.length} steps",
                where,
                episode.episode_id,
            )
        cams[role] = FrameRef(kind="inline", array=np.ascontiguousarray(frames), fps=ref.fps)
    return episode.with_(cameras=cams)


def iter_episodes(
    sources: Iterable[str | Path | dict | SourceSpec], *, decode: bool = False
) -> Iterator[Episode | Rejection]:
    """Every episode of every source, in order, or its rejection (no Ray); a dataset given
    twice is read once."""
    seen: dict[str, str] = {}
    for spec in map(SourceSpec.coerce, sources):
        refs, rejected = discover(spec, seen)
        yield from rejected
        for ref in refs:
            yield load(ref, decode=decode)


# ---- Ray Data -----------------------------------------------------------------------

# Every StreamItem block carries this exact schema, whatever its rows hold: Arrow cannot
# infer a struct from a column that is all None (a block of only rejections) nor a map from
# Python tuples, and Ray would fall back to pickled Python objects that no Parquet writer or
# Arrow batch consumer downstream can read. Building each block against the schema avoids it.
STREAM_ITEM_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "episode" | "rejection"
        ("episode", pa.struct(list(Episode.arrow_schema()))),
        ("rejection", pa.struct(list(Rejection.arrow_schema()))),
    ]
)


def item_row(item: Episode | Rejection) -> dict[str, Any]:
    """A StreamItem row: exactly one of ``episode`` / ``rejection`` is set."""
    if isinstance(item, Episode):
        return {"kind": "episode", "episode": item.to_row(), "rejection": None}
    return {"kind": "rejection", "episode": None, "rejection": item.to_row()}


def item_from_row(row: dict[str, Any]) -> Episode | Rejection:
    if row["kind"] == "episode":
        return Episode.from_row(row["episode"])
    return Rejection.from_row(row["rejection"])


def items_table(items: Iterable[Episode | Rejection]) -> pa.Table:
    """StreamItem rows as an Arrow table with :data:`STREAM_ITEM_SCHEMA`."""
    return pa.Table.from_pylist([item_row(i) for i in items], schema=STREAM_ITEM_SCHEMA)


def _discover_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    # Intermediate rows (also used by curation.pipeline): the ref as JSON, the rejection as a row or None.
    if row.get("duplicate"):
        return [{"kind": "rejection", "ref": "", "rejection": json.loads(row["duplicate"])}]
    refs, rejected = discover(SourceSpec.from_row(row))
    out = [{"kind": "ref", "ref": json.dumps(ref.to_row()), "rejection": None} for ref in refs]
    out += [{"kind": "rejection", "ref": "", "rejection": r.to_row()} for r in rejected]
    return out


def _make_load_batch(decode: bool):
    def load_batch(batch: pa.Table) -> pa.Table:
        items = []
        for row in batch.to_pylist():
            if row["kind"] == "rejection":
                items.append(Rejection.from_row(row["rejection"]))
            else:
                items.append(load(EpisodeRef.from_row(json.loads(row["ref"])), decode=decode))
        return items_table(items)

    return load_batch


def read_episodes(
    sources: Sequence[str | Path | dict | SourceSpec],
    *,
    decode: bool = False,
    load_num_cpus: float = 0.5,
):
    """A ``ray.data.Dataset`` of StreamItem rows (:data:`STREAM_ITEM_SCHEMA`) for every episode.

    Sources are listed in parallel (one task per source) and episodes are loaded — and, with
    ``decode=True``, their video decoded — in the workers, one episode per task. Fractional
    CPUs keep a 2-core machine from deadlocking when actor pools run downstream.
    """
    import ray

    specs = [{**s.to_row(), "duplicate": ""} for s in map(SourceSpec.coerce, sources)]
    if not specs:
        raise ValueError("read_episodes needs at least one source")
    # a dataset given twice is found here, on the driver (the listing tasks see one source each)
    seen: dict[str, str] = {}
    for row in specs:
        spec = SourceSpec.from_row(row)
        dataset_id = _dataset_id_or_none(spec)
        if dataset_id in seen:
            name = spec.name or Path(spec.path).stem
            row["duplicate"] = json.dumps(
                duplicate_rejection(spec.path, name, dataset_id, seen[dataset_id]).to_row()
            )
        elif dataset_id is not None:
            seen[dataset_id] = spec.path
    ds = ray.data.from_items(specs, override_num_blocks=len(specs))
    # discover: 1 source -> N episode refs (+ a rejection for an unlistable source); metadata only
    ds = ds.flat_map(_discover_row, num_cpus=0.25)
    # one ref per block, so that one big source's episodes load in parallel, not in one task
    ds = ds.repartition(target_num_rows_per_block=1)
    # load (+ decode): 1:1, the expensive part; a fixed Arrow schema whatever the rows hold
    return ds.map_batches(
        _make_load_batch(decode), batch_size=1, batch_format="pyarrow", num_cpus=load_num_cpus
    )
