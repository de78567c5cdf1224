"""Build a validated :class:`schemas.Sample` from a window and its encoded frames (1:1).

The last per-row step before shard writing: normalise the window's raw action chunk and
state with the embodiment's statistics (:mod:`schemas.normalize`), attach the
encoded frames from :mod:`curation.stages.compose`, the episode's quality scores and,
when the caption stage ran, the caption and text embedding. The result is validated, so a
bad row fails here naming the field rather than in the shard writer.

The shard phase does the same for a whole work-part table at once
(:func:`normalise_raw_table`, then :func:`schemas.validate_sample_table`), with the same
values, and :func:`row_nbytes` gives the shard packer's size estimate per row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.episode_samples import RAW_SCHEMA
from curation.stages.windowing import Window
from schemas import MAX_DIM, EmbodimentStats, Sample, get_embodiment
from schemas.normalize import NormConfig, normalize_action, normalize_state
from schemas.sample import QUALITY_KEYS

_NORM = NormConfig()


def make_sample(
    window: Window,
    video: bytes,
    *,
    video_format: str,
    height: int,
    width: int,
    stats: EmbodimentStats,
    norm: NormConfig = _NORM,
    caption: str = "",
    quality: Mapping[str, float] | None = None,
    latent_shape: tuple[int, ...] = (),
) -> Sample:
    """The shard row of ``window``; ``quality`` adds to (and overrides) the window's own scores."""
    spec = get_embodiment(window.embodiment)
    action, action_mask = normalize_action(window.action, window.state, spec, stats, norm)
    state, state_mask = normalize_state(window.state, spec, stats, norm)
    scores = {**window.quality, **(quality or {})}
    return Sample(
        sample_id=window.sample_id,
        episode_id=window.episode_id,
        source=window.source,
        embodiment=window.embodiment,
        embodiment_id=spec.id,
        start_frame=window.start_frame,
        frame_indices=window.frame_indices,
        instruction=window.instruction,
        caption=caption,
        video=video,
        video_format=video_format,
        height=int(height),
        width=int(width),
        action=action,
        action_mask=action_mask,
        state=state,
        state_mask=state_mask,
        quality={k: float(v) for k, v in scores.items() if k in QUALITY_KEYS and v is not None},
        latent_shape=tuple(latent_shape),
    ).validate()


def make_sample_fn(
    stats: Mapping[str, EmbodimentStats], norm: NormConfig = _NORM
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map``: a window row that went through
    :func:`curation.stages.compose.make_compose_fn` (``video``, ``video_format``, ``height``,
    ``width``; optionally ``caption``, ``clip_score``) → a Sample row."""
    stats = dict(stats)

    def sample_row(row: dict[str, Any]) -> dict[str, Any]:
        window = Window.from_row(row)
        if window.embodiment not in stats:
            raise KeyError(
                f"no normalisation statistics for embodiment {window.embodiment!r} (have {sorted(stats)})"
            )
        extra = {"clip_score": row["clip_score"]} if row.get("clip_score") is not None else {}
        return make_sample(
            window,
            row["video"],
            video_format=row["video_format"],
            height=row["height"],
            width=row["width"],
            stats=stats[window.embodiment],
            norm=norm,
            caption=row.get("caption") or "",
            quality=extra,
            latent_shape=tuple(row.get("latent_shape") or ()),
        ).to_row()

    return sample_row


# ---- whole tables: the shard phase, vectorised ------------------------------------------
#
# The shard writer gets raw rows by the table (``curation.episode_samples.RAW_SCHEMA``:
# ``raw_action [p, Da]``, ``raw_state [Ds]``) and needs Sample rows. Rather than a Python
# loop per row, the list columns are flattened to numpy once; every step of every row is
# normalised with its row's state (normalize_action on ``[S, 1, Da]`` with ``[S, Ds]``: the
# same float64 element-wise arithmetic as one row at a time, so the values are bit-identical),
# one embodiment at a time because dims and statistics differ, and scattered back into the
# table's row order. Step counts may differ between rows; each step must have the
# embodiment's action dims and each state its state dims.
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

    action_S32 = np.zeros((len(step_len_S), MAX_DIM), dtype=np.float32)
    action_mask_N32 = np.zeros((n, MAX_DIM), dtype=bool)
    state_N32 = np.zeros((n, MAX_DIM), dtype=np.float32)
    state_mask_N32 = np.zeros((n, MAX_DIM), dtype=bool)
    for code, name in enumerate(embodiments.dictionary.to_pylist()):
        if name not in stats:
            raise KeyError(f"no normalisation statistics for embodiment {name!r} (have {sorted(stats)})")
        spec, st = get_embodiment(name), stats[name]
        rows_g = np.flatnonzero(code_N == code)
        if rows_g.size == 0:  # a dictionary entry no row uses (a sliced table)
            continue
        steps_g = np.flatnonzero(code_N[row_of_step_S] == code)
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


def row_nbytes(table: pa.Table) -> np.ndarray:
    """int64 [N]: the shard packer's size estimate of each row, ``len(video) + 4 · (steps · 32
    action values + 2·32 mask values)``; the same for a raw table
    (``raw_action``) and for its normalised Sample table (``action``), so the parts can
    record it before normalisation."""
    video_N = pc.fill_null(pc.binary_length(table["video"]), 0).to_numpy().astype(np.int64)
    action = table["action"] if "action" in table.column_names else table["raw_action"]
    steps_N = pc.fill_null(pc.list_value_length(_combined(action)), 0).to_numpy().astype(np.int64)
    return video_N + 4 * (steps_N * MAX_DIM + 2 * MAX_DIM)
