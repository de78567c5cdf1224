"""Every record that crosses a stage, shard or process boundary (ARCHITECTURE.md, "Data model").

Records are frozen dataclasses with ``validate()``, ``arrow_schema()``, ``to_row()`` and
``from_row()``; :func:`to_table` / :func:`from_table` move lists of them through Arrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import pyarrow as pa

from schemas.embodiment import (
    ACTION_MODES,
    CAMERA_ROLES,
    MAX_DIM,
    ActionDim,
    EmbodimentSpec,
    embodiment_by_id,
    get_embodiment,
    list_embodiments,
    load_embodiment_file,
    register_embodiment,
)
from schemas.episode import Episode, FrameRef, episode_id_for
from schemas.errors import SchemaError, SchemaVersionError
from schemas.manifest import DimStats, EmbodimentStats, Manifest, Rejection, ShardInfo, SourceInput
from schemas.sample import Sample, sample_id_for, window_geometry
from schemas.sample_table import validate_sample_table
from schemas.version import SCHEMA_VERSION, check_schema_version

R = TypeVar("R")


def to_table(records: Sequence[Any]) -> pa.Table:
    """Validate ``records`` (all of one type) and build an Arrow table with the schema version."""
    if not records:
        raise ValueError("to_table needs at least one record")
    cls = type(records[0])
    rows = [(r.validate() if hasattr(r, "validate") else r).to_row() for r in records]
    schema = cls.arrow_schema().with_metadata(
        {"gwp_schema_version": SCHEMA_VERSION, "gwp_record": cls.__name__}
    )
    return pa.Table.from_pylist(rows, schema=schema)


def from_table(cls: type[R], table: pa.Table, where: str = "table") -> list[R]:
    """Records of type ``cls`` from ``table``, checking the schema version stored with it."""
    meta = table.schema.metadata or {}
    found = meta.get(b"gwp_schema_version")
    check_schema_version(found.decode() if found else None, where)
    return [cls.from_row(row) for row in table.to_pylist()]  # type: ignore[attr-defined]


__all__ = [
    "ACTION_MODES",
    "CAMERA_ROLES",
    "MAX_DIM",
    "SCHEMA_VERSION",
    "ActionDim",
    "DimStats",
    "EmbodimentSpec",
    "EmbodimentStats",
    "Episode",
    "FrameRef",
    "Manifest",
    "Rejection",
    "Sample",
    "SchemaError",
    "SchemaVersionError",
    "ShardInfo",
    "SourceInput",
    "check_schema_version",
    "embodiment_by_id",
    "episode_id_for",
    "from_table",
    "get_embodiment",
    "list_embodiments",
    "load_embodiment_file",
    "register_embodiment",
    "sample_id_for",
    "to_table",
    "validate_sample_table",
    "window_geometry",
]
