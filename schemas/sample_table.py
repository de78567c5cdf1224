"""Validation of a whole Sample table at once (a shard, a part): :func:`validate_sample_table`.

Every rule of :meth:`schemas.sample.Sample.validate`, applied column by column with Arrow
compute instead of row by row, so that a shard of thousands of rows is checked in
milliseconds; the error names the same row and field that the row-by-row check would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.embodiment import MAX_DIM
from schemas.errors import SchemaError
from schemas.sample import QUALITY_KEYS, VIDEO_FORMATS, Sample

#
# validate_sample_table applies every rule of Sample.validate to a table at once, column by
# column. Each rule yields a bad-row mask; the error names the first bad row and, of that row,
# the first rule in Sample.validate's order, which is the row and field that validating the
# rows one by one would name. Rules that Arrow's types already enforce (dtypes, the quality
# keys) are left out; nulls, which Arrow allows, are rejected where Sample needs a value.
#
# Legend: N rows, V values of a list column (all rows together).

_Problem = str | Callable[[int], str]
_Rule = tuple[str, np.ndarray, _Problem]  # (field, bad_N, problem or row -> problem)


def _rows_of(row_of_value_V: np.ndarray, bad_V: np.ndarray, n: int) -> np.ndarray:
    bad_N = np.zeros(n, dtype=bool)
    bad_N[row_of_value_V[bad_V]] = True
    return bad_N


def _is_null(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return values.is_null().to_numpy(zero_copy_only=False)


def _true_N(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _float_V(values: pa.Array) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls read as NaN


@dataclass(frozen=True)
class _Flat:
    """A ``list<…>`` column flattened: per row null flag and length, the values and their row."""

    null_N: np.ndarray
    len_N: np.ndarray
    values: pa.Array
    row_of_value_V: np.ndarray

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array) -> _Flat:
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        len_N = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        return cls(_is_null(arr), len_N, arr.flatten(), np.repeat(np.arange(len(arr)), len_N))

    @property
    def start_N(self) -> np.ndarray:
        return np.cumsum(self.len_N) - self.len_N

    @property
    def position_V(self) -> np.ndarray:
        """Index of each value inside its own list."""
        return np.arange(len(self.values)) - np.repeat(self.start_N, self.len_N)

    def rows_where(self, bad_V: np.ndarray) -> np.ndarray:
        return _rows_of(self.row_of_value_V, bad_V, len(self.len_N))


def _nonfinite_rule(name: str, row_of_value_V: np.ndarray, values: pa.Array, n: int) -> _Rule:
    bad_V = ~np.isfinite(_float_V(values))
    return (
        name,
        _rows_of(row_of_value_V, bad_V, n),
        lambda i: f"contains {int(bad_V[row_of_value_V == i].sum())} NaN/inf value(s)",
    )


def _vector_rules(name: str, flat: _Flat, *, finite: bool) -> list[_Rule]:
    """A ``[32]`` vector per row: its shape, no null values and (``finite``) no NaN/inf."""
    rules: list[_Rule] = [
        (name, flat.null_N, f"expected shape ({MAX_DIM},), got null"),
        (
            name,
            ~flat.null_N & (flat.len_N != MAX_DIM),
            lambda i: f"expected shape ({MAX_DIM},), got ({flat.len_N[i]},)",
        ),
        (name, flat.rows_where(_is_null(flat.values)), "contains null value(s)"),
    ]
    if finite:
        rules.append(_nonfinite_rule(name, flat.row_of_value_V, flat.values, len(flat.len_N)))
    return rules


def _mask_N32(flat: _Flat, ok_N: np.ndarray) -> np.ndarray:
    """bool [N, 32] of a mask column; all False on rows that are not ``ok_N``."""
    mask_N32 = np.zeros((len(ok_N), MAX_DIM), dtype=bool)
    rows = np.flatnonzero(ok_N)
    mask_N32[rows] = _true_N(flat.values)[flat.start_N[rows, None] + np.arange(MAX_DIM)]
    return mask_N32


def _ok_N(rules: list[_Rule], name: str, n: int) -> np.ndarray:
    """Rows that pass every rule of ``name`` so far."""
    ok_N = np.ones(n, dtype=bool)
    for field_name, bad_N, _ in rules:
        if field_name == name:
            ok_N &= ~bad_N
    return ok_N


def _field_rules(table: pa.Table) -> list[_Rule]:
    """Strings, integers, frame_indices, video and its format, latent_shape."""
    n, col = table.num_rows, table.column

    def nulls(name: str) -> np.ndarray:
        return _is_null(col(name))

    def ints(name: str) -> np.ndarray:
        return pc.fill_null(col(name), 0).to_numpy().astype(np.int64)

    rules: list[_Rule] = []
    for name in ("sample_id", "episode_id", "source", "embodiment"):
        blank = pc.or_(pc.equal(pc.utf8_length(col(name)), 0), pc.utf8_is_space(col(name)))
        rules += [
            (name, nulls(name), "expected a string, got NoneType"),
            (name, _true_N(blank), "must not be empty"),
        ]
    for name in ("instruction", "caption"):
        rules.append((name, nulls(name), "expected a string, got NoneType"))
    for name, minimum in (("embodiment_id", 0), ("start_frame", 0)):
        values_N = ints(name)
        rules += [
            (name, nulls(name), "expected an integer, got NoneType"),
            (name, values_N < minimum, lambda i, v=values_N, m=minimum: f"must be >= {m}, got {v[i]}"),
        ]

    frames = _Flat.of(col("frame_indices"))
    frame_V = pc.fill_null(frames.values, 0).to_numpy().astype(np.int64)
    has_N = frames.len_N > 0
    first_N = np.zeros(n, dtype=np.int64)
    first_N[has_N] = frame_V[frames.start_N[has_N]]
    not_increasing_V = np.zeros(len(frame_V), dtype=bool)
    not_increasing_V[1:] = (frames.row_of_value_V[1:] == frames.row_of_value_V[:-1]) & (
        frame_V[1:] <= frame_V[:-1]
    )
    rules += [
        ("frame_indices", ~has_N | (first_N != ints("start_frame")), "must start with start_frame"),
        ("frame_indices", frames.rows_where(_is_null(frames.values)), "contains null value(s)"),
        (
            "frame_indices",
            frames.rows_where(not_increasing_V),
            lambda i: f"must increase, got {col('frame_indices')[i].as_py()}",
        ),
    ]

    fmt = col("video_format")
    rules.append(
        (
            "video_format",
            ~_true_N(pc.is_in(fmt, value_set=pa.array(VIDEO_FORMATS))),
            lambda i: f"must be one of {list(VIDEO_FORMATS)}, got {fmt[i].as_py()!r}",
        )
    )
    video_len_N = pc.fill_null(pc.binary_length(col("video")), 0).to_numpy()
    rules.append(("video", video_len_N == 0, "expected non-empty encoded bytes"))
    for name in ("height", "width"):
        values_N = ints(name)
        rules += [
            (name, nulls(name), "expected an integer, got NoneType"),
            (name, values_N < 1, lambda i, v=values_N: f"must be >= 1, got {v[i]}"),
        ]
    latent_len_N = pc.fill_null(pc.list_value_length(col("latent_shape")), 0).to_numpy()
    rules.append(
        (
            "latent_shape",
            _true_N(pc.equal(fmt, "latent")) & (latent_len_N == 0),
            "required when video_format is 'latent'",
        )
    )
    # stored latents: float32 of latent_shape, and never beside latents in the video column
    latents_len_N = pc.fill_null(pc.binary_length(col("latents")), 0).to_numpy().astype(np.int64)
    shape = _Flat.of(col("latent_shape"))
    dims_V = pc.fill_null(shape.values, 0).to_numpy().astype(np.int64)
    size_N = np.ones(n, dtype=np.int64)
    np.multiply.at(size_N, shape.row_of_value_V, dims_V)
    size_N[shape.len_N == 0] = 0
    has_N = latents_len_N > 0
    rules += [
        ("latents", has_N & _true_N(pc.equal(fmt, "latent")), "must be empty when video_format is 'latent'"),
        (
            "latents",
            has_N & (latents_len_N != 4 * size_N),
            lambda i: (
                f"{latents_len_N[i]} bytes do not fit latent_shape "
                f"{tuple(col('latent_shape')[i].as_py() or ())} (float32)"
            ),
        ),
    ]
    return rules


def _array_rules(table: pa.Table) -> list[_Rule]:
    """action, masks, state: shapes, finiteness, a valid action dim, zero padding."""
    n = table.num_rows
    action = _Flat.of(table.column("action"))  # rows → steps
    steps = _Flat.of(action.values)  # steps → values
    row_of_value_V = action.row_of_value_V[steps.row_of_value_V]
    action_V = _float_V(steps.values)
    bad_step_S = steps.null_N | (steps.len_N != MAX_DIM)

    def bad_step(i: int) -> str:
        step = int(np.flatnonzero(bad_step_S & (action.row_of_value_V == i))[0])
        got = "null" if steps.null_N[step] else f"{steps.len_N[step]} values"
        return f"expected shape (*, {MAX_DIM}), got step {step - action.start_N[i]} with {got}"

    rules: list[_Rule] = [
        ("action", action.null_N, f"expected shape (*, {MAX_DIM}), got null"),
        ("action", action.rows_where(bad_step_S), bad_step),
        ("action", _rows_of(row_of_value_V, _is_null(steps.values), n), "contains null value(s)"),
        _nonfinite_rule("action", row_of_value_V, steps.values, n),
        ("action", ~action.null_N & (action.len_N == 0), "chunk must have at least one step"),
    ]
    masks = {name: _Flat.of(table.column(name)) for name in ("action_mask", "state_mask")}
    state = _Flat.of(table.column("state"))
    rules += _vector_rules("action_mask", masks["action_mask"], finite=False)
    rules += _vector_rules("state", state, finite=True)
    rules += _vector_rules("state_mask", masks["state_mask"], finite=False)
    mask_ok_N = {name: _ok_N(rules, name, n) for name in masks}
    mask_N32 = {name: _mask_N32(flat, mask_ok_N[name]) for name, flat in masks.items()}
    rules.append(
        (
            "action_mask",
            mask_ok_N["action_mask"]
            & ~mask_N32["action_mask"].any(axis=1)
            & mask_ok_N["state_mask"]
            & mask_N32["state_mask"].any(axis=1),
            "no valid action dim but a valid state (action-free rows carry neither)",
        )
    )
    # padded dims must be zero: each value's dim looked up in its row's mask (rows with a
    # malformed mask or vector fail a rule above, which comes first)
    for name, values_V, rows_V, dims_V, ok_V in (
        (
            "action",
            action_V,
            row_of_value_V,
            steps.position_V,
            np.repeat(steps.len_N == MAX_DIM, steps.len_N),
        ),
        (
            "state",
            _float_V(state.values),
            state.row_of_value_V,
            state.position_V,
            state.len_N[state.row_of_value_V] == MAX_DIM,
        ),
    ):
        mask_name = f"{name}_mask"
        in_range_V = ok_V & mask_ok_N[mask_name][rows_V]
        dims_V = np.where(in_range_V, dims_V, 0)
        padded_V = in_range_V & ~mask_N32[mask_name][rows_V, dims_V] & (values_V != 0)
        rules.append((name, _rows_of(rows_V, padded_V, n), "padded dims (mask False) must be zero"))
    return rules


def _quality_rules(table: pa.Table) -> list[_Rule]:
    """quality values finite or null (a null struct is no scores)."""
    quality = table.column("quality").combine_chunks()
    rules: list[_Rule] = []
    for key, values in zip(QUALITY_KEYS, quality.flatten(), strict=True):
        value_N = _float_V(pc.fill_null(values, 0.0))
        rules.append(
            (f"quality[{key}]", ~np.isfinite(value_N), lambda i, v=value_N: f"must be finite, got {v[i]}")
        )
    return rules


def validate_sample_table(table: pa.Table, where: str = "Sample table") -> pa.Table:
    """``table`` unchanged when every row passes :meth:`Sample.validate`'s rules, else SchemaError.

    The schema must equal :meth:`Sample.arrow_schema` (metadata aside). The error reads
    ``<where>.<field>: row <i> (sample_id …): <problem>`` for the first bad row, with the field
    names of ``Sample.validate``.
    """
    want = Sample.arrow_schema()
    got = table.schema.remove_metadata()
    if not got.equals(want):
        wrong = [
            f"{f.name} is {got.field(f.name).type if f.name in got.names else 'missing'} (want {f.type})"
            for f in want
            if f.name not in got.names or not got.field(f.name).type.equals(f.type)
        ]
        extra = [name for name in got.names if name not in want.names]
        detail = "; ".join(wrong + ([f"unexpected columns {extra}"] if extra else []))
        raise SchemaError(
            where, "schema", f"does not match Sample.arrow_schema(): {detail or 'column order'}"
        )
    rules = _field_rules(table) + _array_rules(table) + _quality_rules(table)
    firsts = [int(np.argmax(bad_N)) for _, bad_N, _ in rules if bad_N.any()]
    if firsts:
        row = min(firsts)
        name, _, problem = next(rule for rule in rules if rule[1][row])
        text = problem(row) if callable(problem) else problem
        sample_id = table.column("sample_id")[row].as_py()
        raise SchemaError(where, name, f"row {row} (sample_id {sample_id!r}): {text}")
    return table
