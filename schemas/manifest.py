"""Manifest of a curated dataset and its rejection ledger.

The manifest lives in ``meta/manifest.json`` beside the shards and is written last: a
folder without it is an unfinished run. Its invariant, checked by :meth:`Manifest.validate`::

    episodes_in == episodes_with_samples + episodes_rejected     (and likewise for windows)

Every input that did not become a sample has a :class:`Rejection` naming the file, the
episode, the stage and the reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.checks import require_int, require_str
from schemas.errors import SchemaError
from schemas.version import SCHEMA_VERSION, check_schema_version

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")


@dataclass(frozen=True)
class Rejection:
    """One rejection-ledger entry: what was dropped, where it came from, and why."""

    stage: str  # e.g. "load", "filter.static_video", "window"
    reason: str  # short machine-readable code, e.g. "nan_action"
    path: str  # the source file
    episode: str  # episode id, or "<file>#<index>" when no id could be made
    detail: str = ""  # human-readable explanation
    source: str = ""
    window: int = -1  # start frame for window-level rejections, -1 for episodes

    def validate(self) -> Rejection:
        for name in ("stage", "reason", "path", "episode"):
            require_str("Rejection", name, getattr(self, name))
        require_int("Rejection", "window", self.window, minimum=-1)
        return self

    @staticmethod
    def arrow_schema() -> pa.Schema:
        return pa.schema(
            [(f.name, pa.int64() if f.name == "window" else pa.string()) for f in fields(Rejection)]
        )

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Rejection:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class DimStats:
    """Per-dimension statistics of one vector (action or state) of one embodiment."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    q01: tuple[float, ...]
    q99: tuple[float, ...]
    count: int = 0

    def validate(self, where: str = "DimStats") -> DimStats:
        n = len(self.mean)
        for key in STAT_KEYS:
            values = getattr(self, key)
            if len(values) != n:
                raise SchemaError(where, key, f"has {len(values)} dims, mean has {n}")
            if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
                raise SchemaError(where, key, "contains NaN/inf")
        if any(lo > hi for lo, hi in zip(self.q01, self.q99, strict=True)):
            raise SchemaError(where, "q01", "q01 must not exceed q99")
        return self

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k), dtype=np.float32) for k in STAT_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DimStats:
        return cls(
            **{k: tuple(float(v) for v in data[k]) for k in STAT_KEYS}, count=int(data.get("count", 0))
        )


@dataclass(frozen=True)
class EmbodimentStats:
    embodiment: str
    action: DimStats
    state: DimStats

    def to_dict(self) -> dict[str, Any]:
        return {"embodiment": self.embodiment, "action": asdict(self.action), "state": asdict(self.state)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbodimentStats:
        return cls(data["embodiment"], DimStats.from_dict(data["action"]), DimStats.from_dict(data["state"]))


@dataclass(frozen=True)
class SourceInput:
    """One input of the run: its path, format, content hash and episode count."""

    path: str
    format: str
    sha256: str
    episodes: int = 0


@dataclass(frozen=True)
class ShardInfo:
    name: str
    rows: int
    sha256: str
    bytes: int = 0


@dataclass(frozen=True)
class Manifest:
    code_version: str
    config: dict[str, Any]
    counts: dict[str, int]  # stage accounting, see module docstring
    stats: dict[str, EmbodimentStats]
    sources: tuple[SourceInput, ...]
    shards: tuple[ShardInfo, ...]
    rejections: tuple[Rejection, ...]
    schema_version: str = SCHEMA_VERSION
    stage_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # the instructions' token states beside the shards: schemas.text_store.TextStore.index
    text: dict[str, Any] | None = None
    # the codec of the samples' stored latents (schemas.latents.LatentEncoder.identity + latent_shape);
    # None: the shards store no latents
    latents: dict[str, Any] | None = None

    def validate(self) -> Manifest:
        check_schema_version(self.schema_version, "Manifest.schema_version")
        require_str("Manifest", "code_version", self.code_version)
        for key in ("episodes_in", "episodes_with_samples", "episodes_rejected"):
            if key not in self.counts:
                raise SchemaError("Manifest", f"counts[{key}]", "missing")
        c = self.counts
        if c["episodes_in"] != c["episodes_with_samples"] + c["episodes_rejected"]:
            raise SchemaError(
                "Manifest",
                "counts",
                f"episodes_in ({c['episodes_in']}) != episodes_with_samples "
                f"({c['episodes_with_samples']}) + episodes_rejected ({c['episodes_rejected']})",
            )
        if {"windows_in", "samples", "windows_rejected"} <= set(c) and c["windows_in"] != c["samples"] + c[
            "windows_rejected"
        ]:
            raise SchemaError(
                "Manifest",
                "counts",
                f"windows_in ({c['windows_in']}) != samples ({c['samples']}) + "
                f"windows_rejected ({c['windows_rejected']})",
            )
        if "samples" in c and c["samples"] != sum(s.rows for s in self.shards):
            raise SchemaError("Manifest", "shards", "shard rows do not add up to counts['samples']")
        for name, st in self.stats.items():
            st.action.validate(f"Manifest.stats[{name}].action")
            st.state.validate(f"Manifest.stats[{name}].state")
        for r in self.rejections:
            r.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "code_version": self.code_version,
            "config": self.config,
            "counts": self.counts,
            "stage_counts": self.stage_counts,
            "stats": {k: v.to_dict() for k, v in self.stats.items()},
            "sources": [asdict(s) for s in self.sources],
            "shards": [asdict(s) for s in self.shards],
            "rejections": [r.to_row() for r in self.rejections],
            "text": self.text,
            "latents": self.latents,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        check_schema_version(data.get("schema_version"), where)
        return cls(
            schema_version=data["schema_version"],
            code_version=data["code_version"],
            config=data["config"],
            counts={k: int(v) for k, v in data["counts"].items()},
            stage_counts=data.get("stage_counts", {}),
            stats={k: EmbodimentStats.from_dict(v) for k, v in data["stats"].items()},
            sources=tuple(SourceInput(**s) for s in data["sources"]),
            shards=tuple(ShardInfo(**s) for s in data["shards"]),
            rejections=tuple(Rejection.from_row(r) for r in data["rejections"]),
            text=data.get("text"),
            latents=data.get("latents"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        return cls.from_dict(json.loads(text), where)

    # Arrow form: one row, nested parts as JSON text, the ledger as a proper list of structs.
    @staticmethod
    def arrow_schema() -> pa.Schema:
        return pa.schema(
            [
                ("schema_version", pa.string()),
                ("code_version", pa.string()),
                ("config", pa.string()),
                ("counts", pa.map_(pa.string(), pa.int64())),
                ("stage_counts", pa.string()),
                ("stats", pa.string()),
                (
                    "sources",
                    pa.list_(
                        pa.struct(
                            [
                                ("path", pa.string()),
                                ("format", pa.string()),
                                ("sha256", pa.string()),
                                ("episodes", pa.int64()),
                            ]
                        )
                    ),
                ),
                (
                    "shards",
                    pa.list_(
                        pa.struct(
                            [
                                ("name", pa.string()),
                                ("rows", pa.int64()),
                                ("sha256", pa.string()),
                                ("bytes", pa.int64()),
                            ]
                        )
                    ),
                ),
                ("rejections", pa.list_(pa.struct(list(Rejection.arrow_schema())))),
                ("text", pa.string()),
                ("latents", pa.string()),
            ]
        )

    def to_row(self) -> dict[str, Any]:
        d = self.to_dict()
        return {
            **d,
            "config": json.dumps(d["config"], sort_keys=True),
            "counts": list(d["counts"].items()),
            "stage_counts": json.dumps(d["stage_counts"], sort_keys=True),
            "stats": json.dumps(d["stats"], sort_keys=True),
            "text": json.dumps(d["text"], sort_keys=True),
            "latents": json.dumps(d["latents"], sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Manifest:
        counts = row["counts"]
        counts = dict(counts) if not isinstance(counts, dict) else counts
        return cls.from_dict(
            {
                **row,
                "config": json.loads(row["config"]),
                "counts": counts,
                "stage_counts": json.loads(row["stage_counts"]),
                "stats": json.loads(row["stats"]),
                "text": json.loads(row.get("text") or "null"),
                "latents": json.loads(row.get("latents") or "null"),
            }
        )
