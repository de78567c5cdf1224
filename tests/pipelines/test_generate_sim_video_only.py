"""``gwp generate-sim --no-actions``: expert runs written as video only (raw video, mapping
``"actions": false``), read back as action-free episodes with the expert's frames; and the demo
setting that adds such video for pretraining leaves the default demo's commands as they were."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from curation.frames import decode_frames
from curation.ingest import iter_episodes
from pipelines import generate_sim
from policy.envs import MetaWorldConfig, rollout_expert
from schemas import Episode, Rejection
from schemas.config import ConfigError


def test_no_actions_writes_video_that_reads_back_without_actions(tmp_path):
    out = tmp_path / "video"
    argv = ["--tasks", "push-v3", "--episodes-per-task", "2", "--seed", "4", "--image-size", "32"]
    assert (
        generate_sim.main([*argv, "--codec", "h264", "--no-actions", "--out", str(out), "--no-progress"]) == 0
    )
    record = json.loads((out / "meta" / "generation.json").read_text())  # not a top-level sidecar
    assert record["episodes"] == 2 and record["config"]["actions"] is False
    assert json.loads((out / "gwp_source.json").read_text())["actions"] is False

    got = list(iter_episodes([out]))
    assert all(isinstance(ep, Episode) for ep in got), [r for r in got if isinstance(r, Rejection)]
    assert len(got) == 2 and {ep.embodiment for ep in got} == {"metaworld_sawyer"}
    cfg = MetaWorldConfig(task="push-v3", image_size=32)
    for ep, seed in zip(got, record["tasks"]["push-v3"]["seeds_used"], strict=True):
        want = rollout_expert("push-v3", seed, cfg)
        assert not ep.has_action and ep.length == want.length and ep.instruction == want.instruction
        frames = decode_frames(ep.cameras["high"])
        err = np.abs(frames.astype(np.int16) - want.cameras["high"].array.astype(np.int16)).mean()
        assert err < 12, err


def test_the_demo_setting_adds_a_video_source_and_leaves_the_default_alone():
    from pipelines.demo import build_parser
    from pipelines.demo_config import get_demo_config

    cfg = get_demo_config("default")
    assert cfg.pretrain_video_tasks == ()  # the default demo stays comparable with earlier runs
    args = build_parser().parse_args(["--pretrain-video-tasks", "door-open-v3,push-v3"])
    assert args.pretrain_video_tasks == ("door-open-v3", "push-v3")
    with pytest.raises(
        ConfigError, match="pretrain_video_tasks: \\['drawer-open-v3'\\] are the policy's tasks"
    ):
        replace(cfg, pretrain_video_tasks=("drawer-open-v3",))
    with pytest.raises(ConfigError, match="pretrain_video_episodes: must be >= 1"):
        replace(cfg, pretrain_video_episodes=0)
