"""One episode stream from many sources, in-process or on Ray Data.

Two stages, each a pure function so it can be tested without Ray (STYLE.md):

* ``discover(spec)``  source → episode references            (1:N, cheap, metadata only)
* ``load(ref)``       reference → Episode, or a Rejection      (1:1, runs in the workers)

Every input ends up as exactly one Episode or one Rejection: a source that cannot be
listed at all (unknown layout, unreadable folder) is one rejected input, an episode that
fails to load or validate is one rejected input. Nothing raises out of a worker and
nothing is dropped, so ``inputs = episodes + rejections`` always holds.

Rows on the Ray path are :class:`StreamItem` rows: ``kind`` plus either an Episode row or a
Rejection row, so downstream stages can split the ledger off with one ``filter``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from curation.formats import EpisodeRef, LoadError, SourceMapping, detect_format, reader_class
from curation.formats.base import SourceReader
from schemas import Episode, FrameRef, Rejection, SchemaError


@dataclass(frozen=True)
class SourceSpec:
    """One input source: a folder or file, its format (auto-detected if None) and key mapping."""

    path: str
    format: str | None = None
    mapping: dict[str, Any] | None = None  # SourceMapping fields; None = the sidecar in the source
    name: str | None = None

    @classmethod
    def coerce(cls, value: str | Path | dict | SourceSpec) -> SourceSpec:
        if isinstance(value, SourceSpec):
            return value
        if isinstance(value, (str, Path)):
            return cls(path=str(value))
        allowed = {"path", "format", "mapping", "name"}
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
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SourceSpec:
        mapping = json.loads(row["mapping"]) or None
        return cls(row["path"], row["format"] or None, mapping, row["name"] or None)


@lru_cache(maxsize=64)
def _reader(fmt: str, root: str, mapping_json: str, name: str) -> SourceReader:
    """Readers are cached per worker process: opening one may parse a whole metadata table."""
    mapping = (
        SourceMapping.from_dict(json.loads(mapping_json), where=f"{root}: mapping") if mapping_json else None
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


def discover(spec: SourceSpec) -> tuple[list[EpisodeRef], list[Rejection]]:
    """List the episodes of one source; an unlistable source becomes one Rejection."""
    mapping_json = json.dumps(spec.mapping) if spec.mapping else ""
    try:
        fmt = spec.format or detect_format(spec.path)
        reader = _reader(fmt, spec.path, mapping_json, spec.name or "")
        refs = reader.list_episodes()
    except Exception as err:  # every failure goes to the ledger
        return [], [_rejection(err, "discover", spec.path, f"{Path(spec.path).name}#*", spec.name or "")]
    return [_with_mapping(ref, mapping_json) for ref in refs], []


def _with_mapping(ref: EpisodeRef, mapping_json: str) -> EpisodeRef:
    if not mapping_json:
        return ref
    return EpisodeRef(
        ref.format, ref.root, ref.path, ref.index, ref.source, {**ref.locator, "_mapping": mapping_json}
    )


def load(ref: EpisodeRef, *, decode: bool = False) -> Episode | Rejection:
    """Load and validate one episode; ``decode`` materialises its frames (in the worker)."""
    mapping_json = ref.locator.get("_mapping", "")
    try:
        reader = _reader(ref.format, ref.root, mapping_json, ref.source if mapping_json else "")
        episode = reader.load(ref).validate()
        if decode:
            episode = decode_episode(episode)
        return episode
    except Exception as err:  # every failure goes to the ledger
        return _rejection(err, "load", ref.path, ref.label, ref.source)


def decode_episode(episode: Episode) -> Episode:
    """The same episode with every camera's frames decoded inline."""
    from curation.frames import decode_frames

    cams = {}
    for role, ref in episode.cameras.items():
        frames = decode_frames(ref)
        if frames.shape[0] != episode.length:
            raise LoadError(
                "frame_count_mismatch",
                f"camera {role}: decoded {frames.shape[0]} frames, episode has {episode.length} steps",
                ref.path or episode.source_path,
                episode.episode_id,
            )
        cams[role] = FrameRef(kind="inline", array=np.ascontiguousarray(frames), fps=ref.fps)
    return episode.with_(cameras=cams)


def iter_episodes(
    sources: Iterable[str | Path | dict | SourceSpec], *, decode: bool = False
) -> Iterator[Episode | Rejection]:
    """Every episode of every source, in order, or its rejection (no Ray)."""
    for spec in map(SourceSpec.coerce, sources):
        refs, rejected = discover(spec)
        yield from rejected
        for ref in refs:
            yield load(ref, decode=decode)


# ---- Ray Data -----------------------------------------------------------------------


def item_row(item: Episode | Rejection) -> dict[str, Any]:
    """A StreamItem row: exactly one of ``episode`` / ``rejection`` is set."""
    if isinstance(item, Episode):
        return {"kind": "episode", "episode": item.to_row(), "rejection": None}
    return {"kind": "rejection", "episode": None, "rejection": item.to_row()}


def item_from_row(row: dict[str, Any]) -> Episode | Rejection:
    if row["kind"] == "episode":
        return Episode.from_row(row["episode"])
    return Rejection.from_row(row["rejection"])


def _discover_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    refs, rejected = discover(SourceSpec.from_row(row))
    out = [{"kind": "ref", "ref": json.dumps(ref.to_row()), "rejection": None} for ref in refs]
    out += [{"kind": "rejection", "ref": "", "rejection": r.to_row()} for r in rejected]
    return out


def _make_load_row(decode: bool):
    def load_row(row: dict[str, Any]) -> dict[str, Any]:
        if row["kind"] == "rejection":
            return {"kind": "rejection", "episode": None, "rejection": row["rejection"]}
        return item_row(load(EpisodeRef.from_row(json.loads(row["ref"])), decode=decode))

    return load_row


def read_episodes(
    sources: Sequence[str | Path | dict | SourceSpec],
    *,
    decode: bool = False,
    load_num_cpus: float = 0.5,
):
    """A ``ray.data.Dataset`` of StreamItem rows for every episode of every source.

    Sources are listed in parallel (one task per source) and episodes are loaded — and, with
    ``decode=True``, their video decoded — in the workers. Fractional CPUs keep a 2-core
    machine from deadlocking when actor pools run downstream (DESIGN.md §4).
    """
    import ray

    specs = [SourceSpec.coerce(s).to_row() for s in sources]
    ds = ray.data.from_items(specs, override_num_blocks=max(1, len(specs)))
    # discover: 1 source -> N episode refs (+ a rejection for an unlistable source); metadata only
    ds = ds.flat_map(_discover_row, num_cpus=0.25)
    # load (+ decode): 1:1, the expensive part, spread over workers
    return ds.map(_make_load_row(decode), num_cpus=load_num_cpus)
