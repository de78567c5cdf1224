"""Action-free video through the readers and the curation stages, one path at a time.

Readers: raw video whose sidecars have no step table, raw video with no sidecar at all, and a
LeRobot source whose mapping sets ``"actions": false``; with actions expected, a missing table
stays an error. Stages: the action checks skip such episodes (and say so), the statistics leave
them out, and the shard normalisation gives them all-False masks beside rows with actions.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from curation.config import get_preset
from curation.episode_samples import episode_sample_rows, episode_table
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.formats.mapping import SIDECAR_NAME
from curation.formats.raw_video import RawVideoReader, write_raw_video
from curation.ingest import iter_episodes
from curation.phases.pack import normalise_raw_table
from curation.stages.filters import check_episode
from curation.stages.stats import compute_stats, raw_rows_accumulator
from schemas import Episode, Rejection, validate_sample_table
from schemas.errors import LoadError
from tests.support.helpers import make_episodes

LENGTHS = (14, 19)


def _free_folder(tmp_path, name="human"):
    episodes = [ep.without_actions() for ep in make_episodes(LENGTHS, seed=2, source=name)]
    return write_raw_video(episodes, tmp_path / name), episodes


def test_raw_video_with_no_step_table_reads_as_action_free(tmp_path):
    root, want = _free_folder(tmp_path)
    mapping = json.loads((root / SIDECAR_NAME).read_text())
    assert mapping["actions"] is False
    meta = json.loads((root / "episode_000000.json").read_text())
    assert "action" not in meta and "state" not in meta and "table" not in meta
    assert RawVideoReader.detect(root)
    got = [ep for ep in iter_episodes([root])]
    assert all(isinstance(ep, Episode) for ep in got), got
    assert [ep.length for ep in got] == list(LENGTHS)
    for ep, w in zip(got, want, strict=True):
        assert not ep.has_action and ep.action.shape == (ep.length, 0) and ep.state.shape == (ep.length, 0)
        assert set(ep.cameras) == {"high", "wrist"} and ep.instruction == w.instruction
        np.testing.assert_array_equal(ep.timestamps, w.timestamps)


def test_raw_video_with_no_sidecar_at_all(tmp_path):
    root, _ = _free_folder(tmp_path)
    for sidecar in root.glob("episode_*.json"):
        sidecar.unlink()
    mapping = json.loads((root / SIDECAR_NAME).read_text())
    (root / SIDECAR_NAME).write_text(json.dumps({**mapping, "instruction": "wave", "extra": {"fps": 10.0}}))
    assert RawVideoReader.detect(root)
    got = list(iter_episodes([root]))
    assert [ep.length for ep in got] == list(LENGTHS)
    assert all(not ep.has_action and ep.instruction == "wave" and ep.fps == 10.0 for ep in got)
    assert got[0].source_path.endswith("episode_000000.high.mp4")  # the ledger names a real file


def test_a_missing_step_table_is_still_an_error_when_actions_are_expected(tmp_path):
    root, _ = _free_folder(tmp_path)
    mapping = json.loads((root / SIDECAR_NAME).read_text())
    (root / SIDECAR_NAME).write_text(json.dumps({**mapping, "actions": True}))
    got = list(iter_episodes([root]))
    assert len(got) == len(LENGTHS) and all(isinstance(r, Rejection) for r in got)
    assert {r.reason for r in got} == {"bad_sidecar"}
    assert got[0].path.endswith("episode_000000.json") and '"actions": false' in got[0].detail
    with pytest.raises(LoadError, match="no state/action"):
        reader = RawVideoReader(root)
        reader.load(reader.refs()[0])


def test_a_mapping_that_drops_actions_from_a_robot_dataset(tmp_path):
    eps = make_episodes(LENGTHS)
    root = write_lerobot_v3(eps, tmp_path / "robot", repo_id="t/robot", codec="h264")
    mapping = {"embodiment": "metaworld_sawyer", "cameras": {
        "observation.images.high": "high", "observation.images.wrist": "wrist"}}  # fmt: skip
    with_actions = list(iter_episodes([{"path": str(root), "mapping": mapping}]))
    dropped = list(iter_episodes([{"path": str(root), "mapping": {**mapping, "actions": False}}]))
    assert [ep.has_action for ep in with_actions] == [True, True]
    assert [ep.has_action for ep in dropped] == [False, False]
    assert [ep.length for ep in dropped] == [ep.length for ep in with_actions] == list(LENGTHS)
    assert [set(ep.cameras) for ep in dropped] == [{"high", "wrist"}] * 2
    (bad,) = iter_episodes([{"path": str(root), "mapping": {**mapping, "actions": "no"}}])
    assert isinstance(bad, Rejection) and "actions: must be true or false" in bad.detail, bad


def test_action_checks_skip_action_free_video_and_say_so():
    cfg = get_preset("debug").filters
    assert {"frozen_actions", "exploding_actions"} <= set(cfg.enabled)
    cfg = replace(cfg, enabled=("length", "finite", "frozen_actions", "exploding_actions"))
    ep = make_episodes((20,))[0]
    frozen = ep.with_(action=np.zeros_like(ep.action))
    assert check_episode(frozen, cfg).rejection.reason == "frozen_actions"  # the check is live
    verdict = check_episode(frozen.without_actions(), cfg)
    assert verdict.rejection is None and verdict.skipped == ("exploding_actions", "frozen_actions")
    assert check_episode(ep, cfg).skipped == ()


def test_statistics_leave_action_free_rows_out_and_shards_carry_them():
    cfg = get_preset("debug")
    robot = make_episodes((24, 30))
    free = [ep.without_actions() for ep in make_episodes((22,), seed=5, source="human")]
    stats = compute_stats(robot + free, cfg.windows)
    assert stats == compute_stats(robot, cfg.windows)
    assert compute_stats(free, cfg.windows) == {}  # video only: nothing to normalise with

    rows = []
    for ep in (robot[0], free[0]):
        r, _, _ = episode_sample_rows(ep, cfg, {})
        rows += r
    raw = episode_table(rows)
    n_robot = sum(1 for r in rows if r["raw_state"])
    assert 0 < n_robot < len(rows)
    acc = raw_rows_accumulator(raw)  # the same sketch as the robot rows alone
    assert acc.action.n == n_robot * cfg.windows.chunk - sum(
        cfg.windows.chunk - r["valid_steps"] for r in rows if r["raw_state"]
    )
    table = validate_sample_table(normalise_raw_table(raw, stats, cfg.norm))
    masks = np.asarray(table.column("action_mask").to_pylist())
    state_masks = np.asarray(table.column("state_mask").to_pylist())
    action = np.asarray(table.column("action").to_pylist())
    has = masks.any(axis=1)
    assert has.sum() == n_robot and (~has).sum() == len(rows) - n_robot
    assert not state_masks[~has].any() and not action[~has].any()
    assert action.shape[1] == cfg.windows.chunk  # both kinds stack into one batch
    # the action-free rows need no statistics at all
    only_free = episode_table(episode_sample_rows(free[0], cfg, {})[0])
    assert validate_sample_table(normalise_raw_table(only_free, {}, cfg.norm)).num_rows == only_free.num_rows
