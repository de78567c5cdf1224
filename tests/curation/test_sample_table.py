"""Shard rows by the table: normalise_raw_table equals the per-row path exactly, and
validate_sample_table rejects what Sample.validate rejects, naming the same field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from curation.config import WindowConfig
from curation.episode_samples import RAW_SCHEMA
from curation.parts import row_nbytes
from curation.phases.pack import normalise_raw_table
from curation.stages.stats import compute_stats
from curation.stages.windowing import windows
from schemas import SCHEMA_VERSION, Sample, SchemaError, get_embodiment, validate_sample_table
from schemas.normalize import NormConfig, normalize_action, normalize_state
from schemas.sample import QUALITY_KEYS
from tests.curation.test_windowing import make_episode
from tests.schemas.test_schemas import make_sample

NORM = NormConfig()
# different chunk lengths per embodiment: steps are normalised one by one with their row's state
GEOMETRY = {
    "agilex_dual_arm": WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=5),  # 14-D, delta joints
    "metaworld_sawyer": WindowConfig(chunk=5, frame_stride=2, num_future=2, stride=4),  # 4-D, absolute
}


def _raw_rows_and_stats():
    rows, stats = [], {}
    for e, (name, wcfg) in enumerate(GEOMETRY.items()):
        episodes = [make_episode(30 + 4 * i, name, seed=10 * e + i, with_cameras=False) for i in range(3)]
        st = compute_stats(episodes, wcfg, NORM)[name]
        # a constant dim: only centred, not scaled (h = 1)
        q99 = list(st.action.q99)
        q99[1] = st.action.q01[1]
        stats[name] = dataclasses.replace(st, action=dataclasses.replace(st.action, q99=tuple(q99)))
        for ep in episodes:
            for w in windows(ep, wcfg):
                k = len(rows)
                rows.append(
                    {
                        "sample_id": w.sample_id,
                        "episode_id": w.episode_id,
                        "source": w.source,
                        "embodiment": w.embodiment,
                        "embodiment_id": get_embodiment(name).id,
                        "start_frame": w.start_frame,
                        "frame_indices": list(w.frame_indices),
                        "instruction": w.instruction,
                        "caption": [None, "", "a robot arm"][k % 3],
                        "video": bytes([k % 251 + 1]) * (5 + k),
                        "video_format": "png",
                        "height": 16,
                        "width": 24,
                        "quality": None
                        if k % 7 == 0
                        else {
                            q: (None if (k + j) % 3 == 0 else 0.1 * k + j) for j, q in enumerate(QUALITY_KEYS)
                        },
                        "latent_shape": None if k % 2 else [],
                        "raw_action": w.action.tolist(),
                        "raw_state": w.state.tolist(),
                        "valid_steps": w.valid_steps,
                    }
                )
    order = np.random.default_rng(0).permutation(len(rows))  # interleave the embodiments
    return [rows[i] for i in order], stats


def old_path(raw: pa.Table, stats) -> tuple[pa.Table, list[int]]:
    """The per-row shard path as curation.pipeline.normalised_rows + sample_table had it."""
    rows, sizes = [], []
    for row in raw.to_pylist():
        spec, st = get_embodiment(row["embodiment"]), stats[row["embodiment"]]
        raw_state = np.asarray(row["raw_state"], dtype=np.float32)
        action, action_mask = normalize_action(
            np.asarray(row["raw_action"], np.float32), raw_state, spec, st, NORM
        )
        state, state_mask = normalize_state(raw_state, spec, st, NORM)
        sample = Sample(
            sample_id=row["sample_id"],
            episode_id=row["episode_id"],
            source=row["source"],
            embodiment=row["embodiment"],
            embodiment_id=row["embodiment_id"],
            start_frame=row["start_frame"],
            frame_indices=tuple(row["frame_indices"]),
            instruction=row["instruction"],
            caption=row["caption"] or "",
            video=row["video"],
            video_format=row["video_format"],
            height=row["height"],
            width=row["width"],
            action=action,
            action_mask=action_mask,
            state=state,
            state_mask=state_mask,
            quality={k: v for k, v in (row["quality"] or {}).items() if v is not None},
            latent_shape=tuple(row["latent_shape"] or ()),
        ).validate()
        rows.append(sample.to_row())
        sizes.append(len(row["video"]) + 4 * (action.size + 2 * 32))
    return pa.Table.from_pylist(rows, schema=Sample.arrow_schema()), sizes


@pytest.fixture(scope="module")
def raw_and_stats():
    rows, stats = _raw_rows_and_stats()
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA), stats


def test_table_path_equals_row_path_exactly(raw_and_stats):
    raw, stats = raw_and_stats
    assert set(raw.column("embodiment").to_pylist()) == set(GEOMETRY)
    want, want_sizes = old_path(raw, stats)
    got = normalise_raw_table(raw, stats, NORM)
    assert got.schema.equals(Sample.arrow_schema(), check_metadata=True)
    for name in want.column_names:
        assert got[name].equals(want[name]), name
    assert got.equals(want)
    assert validate_sample_table(got) is got
    np.testing.assert_array_equal(row_nbytes(got), want_sizes)
    np.testing.assert_array_equal(row_nbytes(raw), want_sizes)  # the parts record it before normalising
    # the cases the data is meant to cover are there
    assert got["quality"].null_count == 0
    assert raw["quality"].null_count > 0 and raw["caption"].null_count > 0


def test_chunked_and_sliced_tables(raw_and_stats):
    raw, stats = raw_and_stats
    want = normalise_raw_table(raw, stats, NORM)
    chunked = pa.concat_tables([raw.slice(0, 7), raw.slice(7, 20), raw.slice(27)])
    assert chunked["raw_action"].num_chunks == 3
    assert normalise_raw_table(chunked, stats, NORM).equals(want)
    assert normalise_raw_table(raw.slice(11, 9), stats, NORM).equals(want.slice(11, 9))
    assert normalise_raw_table(raw.slice(0, 0), stats, NORM).num_rows == 0


def test_missing_stats_and_wrong_dims_name_the_embodiment(raw_and_stats):
    raw, stats = raw_and_stats
    with pytest.raises(KeyError, match="no normalisation statistics for embodiment 'metaworld_sawyer'"):
        normalise_raw_table(raw, {"agilex_dual_arm": stats["agilex_dual_arm"]}, NORM)
    rows = raw.slice(0, 4).to_pylist()
    row = next(i for i, r in enumerate(rows) if r["embodiment"] == "metaworld_sawyer")
    rows[row]["raw_action"] = [[*step, 0.0] for step in rows[row]["raw_action"]]
    with pytest.raises(
        ValueError,
        match=rf"raw_action step of embodiment 'metaworld_sawyer' must have 4 values, got 5 in row {row}",
    ):
        normalise_raw_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), stats, NORM)


# ---- validate_sample_table ------------------------------------------------------------------


def _pad_nonzero(name: str):
    def corrupt(s: Sample) -> Sample:
        values = getattr(s, name).copy()
        values[..., 20] = 1.0
        return s.with_(**{name: values})

    return corrupt


def _set(name: str, index, value):
    def corrupt(s: Sample) -> Sample:
        values = getattr(s, name).copy()
        values[index] = value
        return s.with_(**{name: values})

    return corrupt


# (corruption, field both Sample.validate and validate_sample_table name); the ones of
# tests/schemas/test_schemas.py that Arrow can hold, plus nulls and the remaining rules
BAD_SAMPLES = [
    (lambda s: s.with_(action=s.action[:, :16]), "action"),
    (lambda s: s.with_(action_mask=np.zeros(32, dtype=bool)), "action_mask"),
    (_pad_nonzero("action"), "action"),
    (lambda s: s.with_(video_format="gif"), "video_format"),
    (lambda s: s.with_(video=b""), "video"),
    (lambda s: s.with_(frame_indices=(0, 4, 2)), "frame_indices"),
    (lambda s: s.with_(frame_indices=(0, 4, 4)), "frame_indices"),
    (lambda s: s.with_(frame_indices=(1, 2)), "frame_indices"),
    (lambda s: s.with_(frame_indices=()), "frame_indices"),
    (lambda s: s.with_(quality={"motion": float("nan")}), "quality[motion]"),
    (lambda s: s.with_(quality={"sharpness": float("inf")}), "quality[sharpness]"),
    (lambda s: s.with_(embodiment_id=-1), "embodiment_id"),
    (lambda s: s.with_(video_format="latent"), "latent_shape"),
    (lambda s: s.with_(sample_id=""), "sample_id"),
    (lambda s: s.with_(sample_id=None), "sample_id"),
    (lambda s: s.with_(episode_id=" \t"), "episode_id"),
    (lambda s: s.with_(source=None), "source"),
    (lambda s: s.with_(embodiment=""), "embodiment"),
    (lambda s: s.with_(instruction=None), "instruction"),
    (lambda s: s.with_(caption=None), "caption"),
    (lambda s: s.with_(embodiment_id=None), "embodiment_id"),
    (lambda s: s.with_(start_frame=-1, frame_indices=(-1, 2)), "start_frame"),
    (lambda s: s.with_(height=0), "height"),
    (lambda s: s.with_(width=None), "width"),
    (lambda s: s.with_(action=np.zeros((0, 32), dtype=np.float32)), "action"),
    (_set("action", (2, 1), np.nan), "action"),
    (lambda s: s.with_(action_mask=s.action_mask[:16]), "action_mask"),
    (_set("state", 3, np.inf), "state"),
    (lambda s: s.with_(state=s.state[:31]), "state"),
    (_pad_nonzero("state"), "state"),
    (lambda s: s.with_(state_mask=np.ones(33, dtype=bool)), "state_mask"),
]


def _table(samples: list[Sample]) -> pa.Table:
    return pa.Table.from_pylist([s.to_row() for s in samples], schema=Sample.arrow_schema())


@pytest.mark.parametrize(("corrupt", "field"), BAD_SAMPLES)
def test_table_rejects_what_sample_rejects(corrupt, field):
    good = make_sample().validate()
    bad = corrupt(good).with_(sample_id="bad-one") if field != "sample_id" else corrupt(good)
    with pytest.raises(SchemaError) as row_err:
        bad.validate()
    assert row_err.value.field == field
    table = _table([good, bad, good])
    with pytest.raises(SchemaError) as table_err:
        validate_sample_table(table, where="shard-3")
    assert table_err.value.record == "shard-3"
    assert table_err.value.field == field
    assert str(table_err.value).startswith(f"shard-3.{field}: row 1 (sample_id ")


def test_table_accepts_good_rows_with_nulls_where_sample_allows_them():
    s = make_sample().validate()
    rows = [
        s,
        s.with_(quality={}, caption="", instruction=""),
        s.with_(video_format="latent", latent_shape=(4, 2, 2)),
    ]
    table = _table([r.validate() for r in rows])
    table = table.replace_schema_metadata({"gwp_schema_version": SCHEMA_VERSION, "gwp_record": "Sample"})
    assert validate_sample_table(table) is table
    # a null quality struct reads as no scores (Sample.from_row does the same)
    quality = pa.array([None] * 3, type=table.schema.field("quality").type)
    validate_sample_table(table.set_column(17, "quality", quality))


def test_first_bad_row_and_first_field_in_validate_order():
    s = make_sample().validate()
    nan_action = _set("action", (0, 0), np.nan)(s)
    rows = [
        s.with_(sample_id="ok"),
        _set("state", 0, np.nan)(s).with_(sample_id="row-1"),
        nan_action.with_(video_format="gif", sample_id="row-2"),  # two faults: video_format first
    ]
    with pytest.raises(
        SchemaError, match=r"Sample table\.state: row 1 \(sample_id 'row-1'\): contains 1 NaN/inf value"
    ):
        validate_sample_table(_table(rows))
    with pytest.raises(
        SchemaError, match=r"Sample table\.video_format: row 0 \(sample_id 'row-2'\): must be one of"
    ):
        validate_sample_table(_table(rows[2:]))


def test_schema_mismatch_is_named():
    table = _table([make_sample().validate()])
    with pytest.raises(SchemaError, match=r"Sample table\.schema: .*action_mask is missing"):
        validate_sample_table(table.drop_columns(["action_mask"]))
    wrong = table.set_column(11, "height", table["height"].cast(pa.int64()))
    with pytest.raises(SchemaError, match=r"height is int64 \(want int32\)"):
        validate_sample_table(wrong)
