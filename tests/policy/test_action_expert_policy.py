"""The action-expert model kind (``debug-mot``) through the policy's whole path.

Fine-tune from a saved ``debug-mot`` backbone → export → ``Policy.from_pretrained`` → the same
actions as the fine-tuned model; a save of the loaded policy reloads bit-identically; a push to
the test Hub comes back by repo id with identical outputs. The data and backbone are built here,
as in ``tests/policy/test_policy.py``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines import finetune
from policy import Policy
from policy.model import GWPPolicyModel
from pretrain.action_expert import MoTActionVideoTransformer
from pretrain.config import get_model_config
from pretrain.model import build_model
from schemas import get_embodiment
from tests.policy.test_policy import _obs, build_shards, observation
from tests.support.tiny_policy import tiny_policy_model

if TYPE_CHECKING:
    from tests.support.hub_fixture import HubEnv

pytest_plugins = ["tests.support.hub_fixture"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("mot-policy")
    data, episodes = build_shards(root / "shards")
    torch.manual_seed(7)
    backbone = build_model(get_model_config("debug-mot"))
    (root / "backbone").mkdir()
    save_file(
        {k: v.contiguous() for k, v in backbone.state_dict().items()},
        str(root / "backbone" / "model.safetensors"),
    )
    (root / "backbone" / "config.json").write_text(json.dumps({"model": backbone.cfg.to_dict()}))
    out = root / "run"
    argv = ["--preset", "debug", "--init", str(root / "backbone"), "--data", str(data), "--out", str(out)]
    argv += ["--steps", "3", "--batch-size", "2", "--ckpt-every", "0", "--no-progress"]
    assert finetune.main(argv) == 0
    return out, episodes, backbone.state_dict()


def test_finetuned_action_expert_saves_reloads_and_predicts_the_same(finetuned, tmp_path):
    out, episodes, init = finetuned
    meta = json.loads((out / "final" / "config.json").read_text())
    assert meta["config"]["model"]["action_expert_dim"] == 32
    policy = Policy.from_pretrained(out / "final")
    assert isinstance(policy.model.transformer, MoTActionVideoTransformer)
    # the fine-tune trained the expert (its weights left the backbone's)
    saved = load_file(str(out / "final" / "model.safetensors"))
    key = next(k for k in saved if k.endswith("action_expert.blocks.0.ffn.0.weight"))
    assert not torch.equal(saved[key], init["action_expert.blocks.0.ffn.0.weight"])

    obs = observation(episodes[1], 5)
    actions = policy.predict_action(obs, seed=3)
    assert actions.shape == (8, 4) and np.isfinite(actions).all()
    policy.model.save_pretrained(tmp_path / "again")
    again = Policy.from_pretrained(tmp_path / "again")
    np.testing.assert_array_equal(again.predict_action(obs, seed=3), actions)
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name


def test_action_expert_policy_round_trips_through_the_hub(hub_env: HubEnv, tmp_path):
    specs = (get_embodiment("metaworld_sawyer"), get_embodiment("agilex_dual_arm"))
    net = tiny_policy_model(specs, chunk=6, action_expert_dim=32, action_expert_ffn_dim=64)
    policy = Policy(net)
    repo_id = hub_env.new_repo_id("gwp-mot-policy")
    assert net.push_to_hub(repo_id).commit
    obs = _obs(get_embodiment("agilex_dual_arm"))
    loaded = Policy.from_pretrained(repo_id, cache_dir=tmp_path / "cache")
    assert isinstance(loaded.model.transformer, MoTActionVideoTransformer)
    np.testing.assert_array_equal(loaded.predict_action(obs, seed=3), policy.predict_action(obs, seed=3))
    assert isinstance(
        GWPPolicyModel.from_pretrained(repo_id, cache_dir=tmp_path / "cache").transformer,
        MoTActionVideoTransformer,
    )
