"""Phase 5, pack: the parts' kept rows, in discovery order → shards of a target size (1 raw row → 1 Sample row).

Two steps, both from the parts alone:

* plan (driver, :func:`plan_shards`): cut the kept rows of the parts, in order, into shards
  of ``ShardConfig.target_bytes`` (estimated from each row's size, which the part records,
  :func:`curation.parts.row_nbytes`) or ``max_rows`` — from the parts' metadata, no row
  read; a near-duplicate's rows leave a gap, so a shard is a list of row ranges;
* write (one Ray task per shard, :func:`write_planned_shard`): read its ranges a row group
  at a time (:class:`PartRows`), normalise them with the corpus statistics
  (:func:`normalise_raw_table`, vectorised) and validate them
  (:func:`schemas.validate_sample_table`; a bad row fails naming its part), append; the
  shard is written atomically and a complete one from an earlier run is kept unread.

The shards concatenate the parts' rows in order, so their content depends neither on the
cut into parts nor on how the job ran. A stale shard left by an interrupted run with more
shards is removed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import CurationConfig, ShardConfig
from curation.episode_samples import RAW_SCHEMA
from curation.parts import read_layout
from curation.phases import log
from curation.shards import (
    SAMPLE_METADATA,
    SHARD_TEMPLATE,
    atomic_parquet_writer,
    shard_info,
    shard_is_complete,
)
from schemas import MAX_DIM, EmbodimentStats, Sample, ShardInfo, get_embodiment, validate_sample_table
from schemas.normalize import NormConfig, normalize_action, normalize_state

_NORM = NormConfig()


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index``: row ranges ``(part path, start, stop)`` of the parts, in order."""

    index: int
    pieces: tuple[tuple[str, int, int], ...]

    @property
    def rows(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)


def plan_shards(parts: list[Path], sc: ShardConfig, exclude: frozenset[str] = frozenset()) -> list[ShardPlan]:
    """Cut the rows of ``parts`` (in order, without the episodes in ``exclude``) into shards of
    ``sc.target_bytes`` (estimated: encoded video + 4 bytes per number) or ``sc.max_rows``,
    from the parts' metadata alone (:func:`curation.parts.read_layout`)."""
    plans: list[ShardPlan] = []
    pieces: list[tuple[str, int, int]] = []
    rows = size = 0
    for path in parts:
        records, nbytes = read_layout(path)
        for run_start, run_stop in _kept_runs(records, exclude):
            start = run_start
            for i in range(run_start, run_stop):
                if rows and (size + nbytes[i] > sc.target_bytes or rows >= sc.max_rows):
                    if i > start:
                        pieces.append((str(path), start, i))
                    plans.append(ShardPlan(len(plans), tuple(pieces)))
                    pieces, rows, size, start = [], 0, 0, i
                rows += 1
                size += nbytes[i]
            pieces.append((str(path), start, run_stop))
    if rows:
        plans.append(ShardPlan(len(plans), tuple(pieces)))
    return plans


def _kept_runs(records: list[dict[str, Any]], exclude: frozenset[str]) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of a part's episodes that are not in ``exclude``, merged."""
    runs: list[tuple[int, int]] = []
    pos = 0
    for rec in records:
        n = rec["samples"]
        if n and rec["episode_id"] not in exclude:
            if runs and runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], pos + n)
            else:
                runs.append((pos, pos + n))
        pos += n
    return runs


def write_planned_shard(
    out: str, plan: ShardPlan, stats: dict[str, EmbodimentStats], cfg: CurationConfig
) -> ShardInfo:
    """One shard (a Ray task in the job): its row ranges ``row_group_rows`` at a time — read,
    normalise and validate (vectorised; a bad row fails naming its part), append — written
    atomically. Memory holds about one row group, not a part: where fresh memory is slow to
    fault in, a whole part's table (tens of MB of PNGs) cost more than
    compressing it. A complete shard from an earlier run is kept without reading anything."""
    sc = cfg.shards
    path = Path(out) / SHARD_TEMPLATE.format(index=plan.index)
    if not shard_is_complete(path, plan.rows):
        schema = Sample.arrow_schema().with_metadata(SAMPLE_METADATA)
        with atomic_parquet_writer(path, schema, compression=sc.compression) as writer:
            rows: PartRows | None = None
            for part, start, stop in plan.pieces:
                # a part's pieces (several where a duplicate left a gap) are consecutive: only the
                # current part is kept open, so memory holds one row group whatever the shard spans
                if rows is None or rows.path != part:
                    rows = None  # the previous part and its row group go before the next is read
                    rows = PartRows(part)
                for raw in rows.chunks(start, stop, sc.row_group_rows):
                    table = validate_sample_table(normalise_raw_table(raw, stats, cfg.norm), where=part)
                    writer.write_table(table.replace_schema_metadata(SAMPLE_METADATA))
            del rows
        # Arrow's allocator keeps freed pages for reuse: hand them back, or each worker that has
        # written a shard keeps the peak of its largest row groups for the rest of the job
        pa.default_memory_pool().release_unused()
    return shard_info(Path(out), plan.index, plan.rows)


class PartRows:
    """Row ranges of one work part, read a row group at a time; the last group read is kept,
    so the pieces either side of a gap share its read."""

    def __init__(self, path: str):
        self.path = path
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.stops = list(itertools.accumulate(sizes))
        self._last: tuple[int, pa.Table | None] = (-1, None)

    def group(self, index: int) -> pa.Table:
        if self._last[0] != index:
            self._last = (index, self.file.read_row_group(index))
        return self._last[1]

    def chunks(self, start: int, stop: int, rows: int) -> Iterator[pa.Table]:
        """Rows ``[start, stop)`` in consecutive tables of ``rows`` (the last one shorter)."""
        pending: list[pa.Table] = []
        have = 0
        for index, group_stop in enumerate(self.stops):
            group_start = self.stops[index - 1] if index else 0
            lo, hi = max(start, group_start), min(stop, group_stop)
            if lo >= hi:
                continue
            table = self.group(index).slice(lo - group_start, hi - lo)
            while table.num_rows:
                take = min(rows - have, table.num_rows)
                pending.append(table.slice(0, take))
                table, have = table.slice(take), have + take
                if have == rows:
                    yield pa.concat_tables(pending)
                    pending, have = [], 0
        if pending:
            yield pa.concat_tables(pending)


def write_shards(
    out: Path,
    parts: list[Path],
    stats: dict[str, EmbodimentStats],
    cfg: CurationConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    use_ray: bool = True,
) -> list[ShardInfo]:
    """Phase 5: plan the shards from the parts' metadata, then write them, one Ray task per
    shard (``use_ray``; in this process otherwise); a stale shard left by an interrupted run
    with more shards is removed."""
    plans = plan_shards(parts, cfg.shards, exclude)
    if use_ray:
        import ray

        task = ray.remote(num_cpus=1)(write_planned_shard)
        pending = {task.remote(str(out), plan, stats, cfg): plan for plan in plans}
        done: dict[int, ShardInfo] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(ready[0])
            done[plan.index] = ray.get(ready[0])
            log(f"phase 5 (shards): {done[plan.index].name} ({plan.rows} rows; {len(done)}/{len(plans)})")
        shards = [done[i] for i in range(len(plans))]
    else:
        shards = [write_planned_shard(str(out), plan, stats, cfg) for plan in plans]
    keep = {s.name for s in shards}
    for stale in (out / "data").glob("shard-*.parquet"):
        if f"data/{stale.name}" not in keep:
            stale.unlink()
    return shards


# ---- normalisation of whole tables, vectorised -------------------------------------------
#
# The shard writer gets raw rows by the table (``curation.episode_samples.RAW_SCHEMA``:
# ``raw_action [p, Da]``, ``raw_state [Ds]``) and needs Sample rows. Rather than a Python
# loop per row, the list columns are flattened to numpy once; every step of every row is
# normalised with its row's state (normalize_action on ``[S, 1, Da]`` with ``[S, Ds]``: the
# same float64 element-wise arithmetic as one row at a time, so the values are bit-identical),
# one embodiment at a time because dims and statistics differ, and scattered back into the
# table's row order. Step counts may differ between rows; each step must have the
# embodiment's action dims and each state its state dims, except in an action-free row
# (``raw_state`` empty, every ``raw_action`` step empty): it stays zero with all-False masks
# and needs no statistics.
#
# Legend: N rows, S steps (all rows together), Da / Ds action / state dims, 32 = MAX_DIM.

RAW_COLUMNS = tuple(RAW_SCHEMA.names)


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _offsets(lengths_N: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths_N, dtype=np.int64)]).astype(np.int32))


def _fixed_rows(values_NK: np.ndarray) -> pa.ListArray:
    """``list<…>`` array with one row of K values per row of ``values_NK``."""
    n, k = values_NK.shape
    return pa.ListArray.from_arrays(_offsets(np.full(n, k)), pa.array(values_NK.reshape(-1)))


def _empty_list_for_null(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A list column with null rows replaced by empty lists (as ``row[name] or ()`` did)."""
    if column.null_count == 0:
        return column
    arr = _combined(column)
    lengths_N = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
    return pa.ListArray.from_arrays(_offsets(lengths_N), arr.flatten())


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def _row_name(raw: pa.Table, row: int) -> str:
    return f"row {row} (sample_id {raw['sample_id'][row].as_py()!r})"


def normalise_raw_table(
    raw: pa.Table, stats: Mapping[str, EmbodimentStats], norm: NormConfig = _NORM
) -> pa.Table:
    """Sample rows (``Sample.arrow_schema()``, no metadata) of a raw work-part table, in its order.

    Equal, value for value, to building each row with ``normalize_action`` /
    ``normalize_state`` and ``Sample(...).to_row()``: a null caption becomes ``""``, a null
    latent_shape ``[]``, a null quality struct a struct of nulls. The rows are not validated here: run
    :func:`schemas.validate_sample_table` on the result.
    """
    missing = [name for name in RAW_COLUMNS if name not in raw.column_names]
    if missing:
        raise ValueError(f"raw sample table lacks column(s) {missing} (has {raw.column_names})")
    n = raw.num_rows
    embodiments = _combined(raw["embodiment"]).dictionary_encode()
    if embodiments.null_count:
        row = _first_null(embodiments)
        raise ValueError(f"raw sample table: embodiment is null in {_row_name(raw, row)}")
    code_N = embodiments.indices.to_numpy()

    rows_A = _combined(raw["raw_action"])
    rows_state = _combined(raw["raw_state"])
    for name, arr in (("raw_action", rows_A), ("raw_state", rows_state)):
        if arr.null_count:
            raise ValueError(f"raw sample table: {name} is null in {_row_name(raw, _first_null(arr))}")
    steps_per_row_N = pc.list_value_length(rows_A).to_numpy()
    row_of_step_S = np.repeat(np.arange(n), steps_per_row_N)
    steps_S = rows_A.flatten()
    if steps_S.null_count:
        row = int(row_of_step_S[_first_null(steps_S)])
        raise ValueError(f"raw sample table: a raw_action step is null in {_row_name(raw, row)}")
    step_len_S = pc.list_value_length(steps_S).to_numpy()
    step_start_S = np.cumsum(step_len_S) - step_len_S
    action_values = steps_S.flatten().to_numpy(zero_copy_only=False)

    state_len_N = pc.list_value_length(rows_state).to_numpy()
    state_start_N = np.cumsum(state_len_N) - state_len_N
    state_values = rows_state.flatten().to_numpy(zero_copy_only=False)
    free_N = state_len_N == 0  # action-free video: no state, no action values
    if (free_N[row_of_step_S] & (step_len_S != 0)).any():
        row = int(row_of_step_S[np.flatnonzero(free_N[row_of_step_S] & (step_len_S != 0))[0]])
        raise ValueError(
            f"raw sample table: {_row_name(raw, row)} has actions but no raw_state (an action-free "
            "row has neither)"
        )

    action_S32 = np.zeros((len(step_len_S), MAX_DIM), dtype=np.float32)
    action_mask_N32 = np.zeros((n, MAX_DIM), dtype=bool)
    state_N32 = np.zeros((n, MAX_DIM), dtype=np.float32)
    state_mask_N32 = np.zeros((n, MAX_DIM), dtype=bool)
    for code, name in enumerate(embodiments.dictionary.to_pylist()):
        rows_g = np.flatnonzero((code_N == code) & ~free_N)
        if rows_g.size == 0:  # a dictionary entry no row with actions uses (a sliced table)
            continue
        if name not in stats:
            raise KeyError(f"no normalisation statistics for embodiment {name!r} (have {sorted(stats)})")
        spec, st = get_embodiment(name), stats[name]
        steps_g = np.flatnonzero((code_N[row_of_step_S] == code) & ~free_N[row_of_step_S])
        for what, lengths, owner, dims in (
            ("raw_state", state_len_N[rows_g], rows_g, spec.state_dim),
            ("raw_action step", step_len_S[steps_g], row_of_step_S[steps_g], spec.action_dim),
        ):
            wrong = np.flatnonzero(lengths != dims)
            if wrong.size:
                raise ValueError(
                    f"raw sample table: {what} of embodiment {name!r} must have {dims} values, "
                    f"got {int(lengths[wrong[0]])} in {_row_name(raw, int(owner[wrong[0]]))}"
                )
        state_gDs = state_values[state_start_N[rows_g, None] + np.arange(spec.state_dim)]
        state_N32[rows_g], state_mask_N32[rows_g] = normalize_state(state_gDs, spec, st, norm)
        # each step with its own row's state: [S_g, 1, Da] against [S_g, Ds]
        action_g1Da = action_values[step_start_S[steps_g, None] + np.arange(spec.action_dim)][:, None]
        step_state_gDs = state_values[state_start_N[row_of_step_S[steps_g], None] + np.arange(spec.state_dim)]
        action_g132, action_mask_N32[rows_g] = normalize_action(action_g1Da, step_state_gDs, spec, st, norm)
        action_S32[steps_g] = action_g132[:, 0]

    schema = Sample.arrow_schema()
    quality = _combined(raw["quality"])
    computed = {
        "caption": pc.fill_null(raw["caption"], ""),
        "action": pa.ListArray.from_arrays(_offsets(steps_per_row_N), _fixed_rows(action_S32)),
        "action_mask": _fixed_rows(action_mask_N32),
        "state": _fixed_rows(state_N32),
        "state_mask": _fixed_rows(state_mask_N32),
        # flatten() folds a null struct into its fields: a null quality reads as no scores
        "quality": pa.StructArray.from_arrays(quality.flatten(), fields=list(quality.type)),
        "latent_shape": _empty_list_for_null(raw["latent_shape"]),
    }
    columns = [(computed[f.name] if f.name in computed else raw[f.name]).cast(f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
