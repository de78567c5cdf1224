"""Sample: one training row of a curated shard.

A window of an episode starting at frame t (ARCHITECTURE.md, "Data model")::

    frames       observation frame t and K future frames t + k·Δ, composed camera views,
                 stored encoded (``video`` bytes + ``video_format``) or as codec latents
    action       [p, 32] float32  normalised chunk a[t : t+p], padded to 32 dims
    action_mask  [32]    bool     valid action dims of the embodiment
    state        [32]    float32  normalised state at t, padded
    state_mask   [32]    bool

**Action-free samples** (windows of action-free video, see :mod:`schemas.episode`) have an
all-False ``action_mask``, an all-zero ``action`` of the usual ``[p, 32]`` shape (so batches
mixing both kinds stack) and no state either (``state_mask`` all False, ``state`` zero): the
statistics that normalise a state come from the rows with actions only, and pretraining hides
the state of such rows' actions anyway. The mask is the marker (no extra column).
So a row is either action-free in full (no action dim, no state dim) or it carries actions; a
row with state but no action dim is a mask that lost its actions, and stays an error.

The instruction's token states are not per sample: they are stored once per unique instruction
beside the shards (``schemas.text_store``).

**Stored latents** (schema 3.1, optional): ``latents`` holds the frames' codec latents beside the
encoded frames, when curation ran its latent stage (:mod:`schemas.latents`: float32 bytes of
shape ``latent_shape = (C, F', h, w)``; the manifest's ``latents`` names the codec). A row
without them has ``latents`` null or empty; shards written before 3.1 have no such column,
and readers treat it as absent (:data:`OPTIONAL_COLUMNS`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.checks import require_array, require_choice, require_int, require_str
from schemas.embodiment import MAX_DIM
from schemas.episode import GWP_NAMESPACE
from schemas.errors import SchemaError

VIDEO_FORMATS = ("mp4", "png", "latent")
OPTIONAL_COLUMNS = ("latents",)  # columns a reader may find missing (shards written before they existed)
QUALITY_KEYS = ("motion", "clip_score", "brightness", "sharpness")


def window_geometry(chunk: int, stride_frames: int, num_future: int) -> str:
    """Name of a window geometry, part of every sample id (p, Δ, K)."""
    return f"p{chunk}-d{stride_frames}-k{num_future}"


def sample_id_for(episode_id: str, start_frame: int, geometry: str) -> str:
    return str(uuid.uuid5(GWP_NAMESPACE, f"sample:{episode_id}:{start_frame}:{geometry}"))


@dataclass(frozen=True, eq=False)
class Sample:
    sample_id: str
    episode_id: str
    source: str
    embodiment: str
    embodiment_id: int
    start_frame: int
    frame_indices: tuple[int, ...]  # t, t+Δ, …, t+KΔ
    instruction: str
    caption: str
    video: bytes
    video_format: str
    height: int
    width: int
    action: np.ndarray
    action_mask: np.ndarray
    state: np.ndarray
    state_mask: np.ndarray
    quality: dict[str, float] = field(default_factory=dict)
    latent_shape: tuple[int, ...] = ()
    latents: bytes = b""  # stored codec latents, float32 of latent_shape (empty: none)

    @property
    def chunk(self) -> int:
        return int(self.action.shape[0])

    @property
    def has_action(self) -> bool:
        return bool(self.action_mask.any())

    def with_(self, **changes: Any) -> Sample:
        return replace(self, **changes)

    def validate(self) -> Sample:
        r = "Sample"
        for name in ("sample_id", "episode_id", "source", "embodiment"):
            require_str(r, name, getattr(self, name))
        require_str(r, "instruction", self.instruction, nonempty=False)
        require_str(r, "caption", self.caption, nonempty=False)
        require_int(r, "embodiment_id", self.embodiment_id, minimum=0)
        require_int(r, "start_frame", self.start_frame, minimum=0)
        if not self.frame_indices or self.frame_indices[0] != self.start_frame:
            raise SchemaError(r, "frame_indices", "must start with start_frame")
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:], strict=False)):
            raise SchemaError(r, "frame_indices", f"must increase, got {list(self.frame_indices)}")
        require_choice(r, "video_format", self.video_format, VIDEO_FORMATS)
        if not isinstance(self.video, (bytes, bytearray)) or not self.video:
            raise SchemaError(r, "video", "expected non-empty encoded bytes")
        require_int(r, "height", self.height, minimum=1)
        require_int(r, "width", self.width, minimum=1)
        if self.video_format == "latent" and not self.latent_shape:
            raise SchemaError(r, "latent_shape", "required when video_format is 'latent'")
        if self.latents:
            if self.video_format == "latent":
                raise SchemaError(r, "latents", "must be empty when video_format is 'latent'")
            want = 4 * int(np.prod(self.latent_shape)) if self.latent_shape else 0
            if len(self.latents) != want:
                raise SchemaError(
                    r,
                    "latents",
                    f"{len(self.latents)} bytes do not fit latent_shape {self.latent_shape} (float32)",
                )
        require_array(r, "action", self.action, shape=(None, MAX_DIM), dtype=np.float32, finite=True)
        if self.action.shape[0] < 1:
            raise SchemaError(r, "action", "chunk must have at least one step")
        require_array(r, "action_mask", self.action_mask, shape=(MAX_DIM,), dtype=np.bool_)
        require_array(r, "state", self.state, shape=(MAX_DIM,), dtype=np.float32, finite=True)
        require_array(r, "state_mask", self.state_mask, shape=(MAX_DIM,), dtype=np.bool_)
        if not self.action_mask.any() and self.state_mask.any():
            raise SchemaError(
                r, "action_mask", "no valid action dim but a valid state (action-free rows carry neither)"
            )
        for name, values, mask in (
            ("action", self.action, self.action_mask),
            ("state", self.state, self.state_mask),
        ):
            if np.any(values[..., ~mask] != 0):
                raise SchemaError(r, name, "padded dims (mask False) must be zero")
        for key, value in self.quality.items():
            require_choice(r, "quality", key, QUALITY_KEYS)
            if value is not None and not np.isfinite(value):
                raise SchemaError(r, f"quality[{key}]", f"must be finite, got {value}")
        return self

    # ---- Arrow ---------------------------------------------------------------------
    @staticmethod
    def arrow_schema() -> pa.Schema:
        quality = pa.struct([(k, pa.float32()) for k in QUALITY_KEYS])
        return pa.schema(
            [
                ("sample_id", pa.string()),
                ("episode_id", pa.string()),
                ("source", pa.string()),
                ("embodiment", pa.string()),
                ("embodiment_id", pa.int32()),
                ("start_frame", pa.int64()),
                ("frame_indices", pa.list_(pa.int64())),
                ("instruction", pa.string()),
                ("caption", pa.string()),
                ("video", pa.binary()),
                ("video_format", pa.string()),
                ("height", pa.int32()),
                ("width", pa.int32()),
                ("action", pa.list_(pa.list_(pa.float32()))),
                ("action_mask", pa.list_(pa.bool_())),
                ("state", pa.list_(pa.float32())),
                ("state_mask", pa.list_(pa.bool_())),
                ("quality", quality),
                ("latent_shape", pa.list_(pa.int32())),
                ("latents", pa.binary()),
            ]
        )

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["frame_indices"] = list(self.frame_indices)
        row["video"] = bytes(self.video)
        for name in ("action", "action_mask", "state", "state_mask"):
            row[name] = row[name].tolist()
        # quality scores are float32 in the shard; round here so a round trip is exact
        row["quality"] = {
            k: None if self.quality.get(k) is None else float(np.float32(self.quality[k]))
            for k in QUALITY_KEYS
        }
        row["latent_shape"] = list(self.latent_shape)
        row["latents"] = bytes(self.latents) if self.latents else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        quality = {k: float(np.float32(v)) for k, v in (row.get("quality") or {}).items() if v is not None}
        return cls(
            sample_id=row["sample_id"],
            episode_id=row["episode_id"],
            source=row["source"],
            embodiment=row["embodiment"],
            embodiment_id=int(row["embodiment_id"]),
            start_frame=int(row["start_frame"]),
            frame_indices=tuple(int(i) for i in row["frame_indices"]),
            instruction=row["instruction"],
            caption=row["caption"],
            video=bytes(row["video"]),
            video_format=row["video_format"],
            height=int(row["height"]),
            width=int(row["width"]),
            action=np.asarray(row["action"], dtype=np.float32).reshape(-1, MAX_DIM),
            action_mask=np.asarray(row["action_mask"], dtype=bool),
            state=np.asarray(row["state"], dtype=np.float32),
            state_mask=np.asarray(row["state_mask"], dtype=bool),
            quality=quality,
            latent_shape=tuple(row.get("latent_shape") or ()),
            latents=bytes(row.get("latents") or b""),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self.to_row() == other.to_row()

    __hash__ = None  # type: ignore[assignment]


# ---- whole tables ------------------------------------------------------------------------
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
