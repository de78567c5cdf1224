"""Work parts: the resumable unit of the curation job's episode phase (``.work/parts/``).

A part holds the raw sample rows of a run of consecutive discovered episodes (schema
:data:`curation.episode_samples.RAW_SCHEMA`, rows in discovery order, each episode's
windows by start frame) and, in the file's metadata, one record per episode (its verdict
for the driver's accounting and dedup, and ``samples``, its number of rows, in discovery
order), beside each record the episode's statistics sketch (a serialised
:class:`curation.stages.stats.StatsAccumulator` of its emitted windows, or null), and the
size estimate of every row (:func:`row_nbytes`), so the shards can be planned from the
metadata alone (:func:`curation.phases.pack.plan_shards`). The Ray task that finishes a part writes it, atomically:
a part that exists is complete, and a rerun skips it.

Because rows, records and sketches are all in discovery order, how the episodes were cut
into parts (which depends on the CPUs of the first run) changes nothing downstream: the
shards concatenate the parts' rows in order, and the statistics merge the episodes'
sketches in order.

Parts are zstd-compressed like the shards: a composed frame is in the PNG stacks of every
window that uses it, and zstd finds those repeats (4× smaller shards, and less to write).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.shards import atomic_write_table
from schemas import MAX_DIM

LEDGER_KEY = b"gwp_ledger"
SKETCHES_KEY = b"gwp_sketches"
ROW_NBYTES_KEY = b"gwp_row_nbytes"


def part_path(work: Path, index: int) -> Path:
    return Path(work) / "parts" / f"part-{index:05d}.parquet"


def write_part(
    path: Path, table: pa.Table, records: list[dict[str, Any]], sketches: list[bytes | None]
) -> None:
    """Write one part atomically; ``records`` and ``sketches`` are aligned, in discovery order."""
    if len(records) != len(sketches):
        raise ValueError(f"{path}: {len(records)} records but {len(sketches)} sketches")
    samples = sum(r.get("samples", 0) for r in records)
    if samples != table.num_rows:
        raise ValueError(f"{path}: the records count {samples} samples, the table has {table.num_rows} rows")
    meta = {
        LEDGER_KEY: json.dumps(records).encode(),
        SKETCHES_KEY: encode_sketches(sketches).encode(),
        ROW_NBYTES_KEY: json.dumps(row_nbytes(table).tolist()).encode(),
    }
    atomic_write_table(path, table.replace_schema_metadata(meta))


def read_part(path: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``(raw sample rows, episode records)`` of one part."""
    table = pq.read_table(path)
    return table, json.loads(table.schema.metadata[LEDGER_KEY])


def read_records(path: Path) -> list[dict[str, Any]]:
    return json.loads(pq.read_schema(path).metadata[LEDGER_KEY])


def read_layout(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """``(records, size estimate of every row)`` from the part's metadata, no row read: each
    record's ``samples`` rows follow the previous record's, in order."""
    meta = pq.read_schema(path).metadata
    return json.loads(meta[LEDGER_KEY]), json.loads(meta[ROW_NBYTES_KEY])


def iter_sketches(path: Path) -> Iterator[tuple[dict[str, Any], bytes | None]]:
    """``(record, sketch bytes or None)`` for every episode of the part, in discovery order."""
    meta = pq.read_schema(path).metadata
    records = json.loads(meta[LEDGER_KEY])
    yield from zip(records, decode_sketches(meta[SKETCHES_KEY]), strict=True)


def encode_sketches(sketches: list[bytes | None]) -> str:
    """JSON text of per-episode sketches (base64, null for an episode without samples)."""
    return json.dumps([None if s is None else base64.b64encode(s).decode() for s in sketches])


def decode_sketches(text: str | bytes) -> list[bytes | None]:
    return [None if s is None else base64.b64decode(s) for s in json.loads(text)]


def row_nbytes(table: pa.Table) -> np.ndarray:
    """int64 [N]: the shard packer's size estimate of each row, ``len(video) + len(latents) + 4 ·
    (steps · 32 action values + 2·32 mask values)``; the same for a raw table
    (``raw_action``) and for its normalised Sample table (``action``), so the parts can
    record it before normalisation."""
    video_N = pc.fill_null(pc.binary_length(table["video"]), 0).to_numpy().astype(np.int64)
    if "latents" in table.column_names:  # stored latents (curation.latents) weigh like the frames
        video_N += pc.fill_null(pc.binary_length(table["latents"]), 0).to_numpy().astype(np.int64)
    action = table["action"] if "action" in table.column_names else table["raw_action"]
    if isinstance(action, pa.ChunkedArray):
        action = action.combine_chunks()
    steps_N = pc.fill_null(pc.list_value_length(action), 0).to_numpy().astype(np.int64)
    return video_N + 4 * (steps_N * MAX_DIM + 2 * MAX_DIM)
