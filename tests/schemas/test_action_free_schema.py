"""Action-free video in the schemas: an Episode with ``action [T, 0]``, a Sample with all-False
masks; what stays an error; the 3.0 version reads 2.x data and refuses 1.x."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from schemas import MAX_DIM, Episode, Sample, SchemaError, SchemaVersionError, validate_sample_table
from schemas.version import SCHEMA_VERSION, check_schema_version
from tests.schemas.test_schemas import make_sample
from tests.support.helpers import make_episodes


def _sample(**changes) -> Sample:
    """test_schemas' sample as action-free video: every mask False, zero action and state."""
    return (
        make_sample(8)
        .with_(
            sample_id="s0",
            source="human",
            action=np.zeros((8, MAX_DIM), np.float32),
            action_mask=np.zeros(MAX_DIM, bool),
            state=np.zeros(MAX_DIM, np.float32),
            state_mask=np.zeros(MAX_DIM, bool),
        )
        .with_(**changes)
    )


def test_an_episode_without_actions_validates_and_round_trips():
    ep = make_episodes((12,))[0]
    free = ep.without_actions().validate()
    assert not free.has_action and ep.has_action
    assert free.action.shape == (12, 0) and free.state.shape == (12, 0) and free.length == 12
    back = Episode.from_row(free.to_row()).validate()
    assert back == free and back.action.shape == (12, 0) and back.length == 12
    # the state may stay (a mapping that drops actions from a robot's data)
    kept_state = free.with_(state=ep.state).validate()
    assert Episode.from_row(kept_state.to_row()).state.shape == (12, 4)


@pytest.mark.parametrize(
    "change, field, problem",
    [
        # a partial action (wrong width) is not "no actions"
        (lambda ep: ep.with_(action=ep.action[:, :2].copy()), "action", r"expected shape \(\*, 4\)"),
        # an episode with actions must carry its state (delta dims are relative to it)
        (
            lambda ep: ep.with_(state=np.zeros((ep.length, 0), np.float32)),
            "state",
            r"expected shape \(12, 4\)",
        ),
        # an action-free episode still has T steps everywhere
        (lambda ep: ep.without_actions().with_(timestamps=ep.timestamps[:5]), "timestamps", "shape"),
        (
            lambda ep: ep.without_actions().with_(state=np.zeros((12, 3), np.float32)),
            "state",
            r"expected shape \(12, 4\)",
        ),
    ],
)
def test_what_stays_an_error(change, field, problem):
    ep = make_episodes((12,))[0]
    with pytest.raises(SchemaError, match=rf"Episode\.{field}: .*{problem}"):
        change(ep).validate()


def test_an_action_free_sample_validates_alone_and_in_a_table():
    free = _sample().validate()
    assert not free.has_action
    robot = _sample(
        sample_id="s1",
        action=np.pad(np.full((8, 4), 0.5, np.float32), ((0, 0), (0, MAX_DIM - 4))),
        action_mask=np.arange(MAX_DIM) < 4,
        state=np.pad(np.full(4, 0.1, np.float32), (0, MAX_DIM - 4)),
        state_mask=np.arange(MAX_DIM) < 4,
    ).validate()
    table = pa.Table.from_pylist([free.to_row(), robot.to_row()], schema=Sample.arrow_schema())
    assert validate_sample_table(table) is table
    assert [Sample.from_row(r).has_action for r in table.to_pylist()] == [False, True]


@pytest.mark.parametrize(
    "changes, field, problem",
    [
        # a row that lost its action mask but kept a state: not action-free video, a broken row
        ({"state_mask": np.arange(MAX_DIM) < 4}, "action_mask", "no valid action dim but a valid state"),
        # action-free rows carry zeros: a value under an all-False mask is still padding that is not zero
        ({"action": np.full((8, MAX_DIM), 0.5, np.float32)}, "action", "padded dims"),
    ],
)
def test_a_sample_that_claims_actions_it_does_not_have_is_refused(changes, field, problem):
    bad = _sample(**changes)
    with pytest.raises(SchemaError, match=rf"Sample\.{field}: {problem}"):
        bad.validate()
    table = pa.Table.from_pylist(
        [_sample(sample_id="ok").to_row(), bad.to_row()], schema=Sample.arrow_schema()
    )
    with pytest.raises(SchemaError, match=rf"t\.{field}: row 1 \(sample_id 's0'\): {problem}"):
        validate_sample_table(table, where="t")


def test_version_3_reads_its_own_data_and_refuses_older_majors():
    assert SCHEMA_VERSION.split(".")[0] == "3"
    check_schema_version(SCHEMA_VERSION, "new.parquet")
    # 2.x data has a pooled text column and no token states beside the shards: nothing to condition on
    for old in ("1.0", "2.0"):
        with pytest.raises(SchemaVersionError, match=rf"old\.parquet: written with schema version '{old}'"):
            check_schema_version(old, "old.parquet")
