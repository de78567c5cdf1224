"""generate_sim end to end: expert rollouts -> LeRobot v3.0 dataset + generation.json, read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import generate_sim
from pipelines.generate_sim import GenerateConfig, TaskReport, generate, generate_episodes
from policy.envs import MetaWorldConfig, rollout_expert


def test_cli_writes_a_readable_dataset_of_successful_episodes(tmp_path):
    from curation.formats.lerobot_v3 import LeRobotV3Reader
    from curation.frames import decode_frames

    out = tmp_path / "ds"
    argv = ["--tasks", "push-v3", "--episodes-per-task", "2", "--seed", "4", "--image-size", "64"]
    assert generate_sim.main([*argv, "--out", str(out), "--no-progress"]) == 0

    record = json.loads((out / "generation.json").read_text())
    report = record["tasks"]["push-v3"]
    assert record["episodes"] == report["successes"] == 2
    assert report["seeds_used"] == [4, 5] and report["failures"] == 0
    assert record["config"]["codec"] == "av1" and record["metaworld_version"] == "3.1.1"

    reader = LeRobotV3Reader(out)
    refs = reader.list_episodes()
    assert len(refs) == 2
    cfg = MetaWorldConfig(task="push-v3", image_size=64)
    for ref, seed in zip(refs, report["seeds_used"], strict=True):
        got = reader.load(ref)
        want = rollout_expert("push-v3", seed, cfg)
        assert got.instruction == "push the puck to the goal"
        assert got.embodiment == "metaworld_sawyer" and got.fps == 80.0
        np.testing.assert_array_equal(got.action, want.action)
        np.testing.assert_array_equal(got.state, want.state)
        assert record["frames"] >= got.length
        for role in ("high", "wrist"):
            frames = decode_frames(got.cameras[role])
            assert frames.shape == want.cameras[role].array.shape
            err = np.abs(frames.astype(np.int16) - want.cameras[role].array.astype(np.int16)).mean()
            assert err < 12, f"{role}: mean abs error {err:.1f} after AV1"


def test_failed_expert_rollouts_are_counted_and_nothing_is_written(tmp_path):
    cfg = GenerateConfig(
        tasks=("door-open-v3",), episodes_per_task=1, image_size=16, max_steps=5, max_attempts=3
    )
    reports: dict[str, TaskReport] = {}
    assert list(generate_episodes(cfg, reports, progress=False)) == []
    assert reports["door-open-v3"].failures == 3 and reports["door-open-v3"].seeds_failed == [0, 1, 2]
    with pytest.raises(RuntimeError, match="no expert episode succeeded"):
        generate(cfg, tmp_path / "none", progress=False)
    assert not (tmp_path / "none" / "generation.json").exists()


def test_workers_do_not_change_the_episodes():
    cfg = GenerateConfig(tasks=("button-press-topdown-v3",), episodes_per_task=2, image_size=16, seed=10)
    serial = list(generate_episodes(cfg, {}, progress=False))
    parallel = list(generate_episodes(GenerateConfig(**{**cfg.__dict__, "workers": 2}), {}, progress=False))
    assert len(serial) == 2
    assert serial == parallel


def test_bad_arguments_are_reported(capsys):
    assert generate_sim.main(["--tasks", "push-v33", "--out", "x"]) == 2
    assert "did you mean 'push-v3'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="duplicate"):
        GenerateConfig(tasks=("push-v3", "push-v3"))
