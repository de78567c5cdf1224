"""A policy pushed to the Hub comes back by repo id, in a fresh cache, with identical outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from policy import Policy
from policy.model import GWPPolicyModel
from schemas import get_embodiment
from schemas.hub.client import HubRepoNotFoundError, HubRevisionNotFoundError
from tests.policy.test_policy import _obs, small_policy  # noqa: F401  (fixture)

if TYPE_CHECKING:
    from tests.support.hub_fixture import HubEnv

pytest_plugins = ["tests.support.hub_fixture"]


def test_push_policy_then_from_pretrained_by_repo_id(small_policy, hub_env: HubEnv, tmp_path):  # noqa: F811
    repo_id = hub_env.new_repo_id("gwp-policy")
    card = {"dataset_repo": "tester/curated", "dataset_revision": "0" * 40, "eval_results": {"success": 0.5}}
    pushed = small_policy.model.push_to_hub(repo_id, card_data=card)
    assert pushed.commit and pushed.new_commits >= 1

    obs = _obs(get_embodiment("agilex_dual_arm"))
    expected = small_policy.predict_action(obs, seed=3)
    loaded = Policy.from_pretrained(repo_id, cache_dir=tmp_path / "fresh-cache")
    np.testing.assert_array_equal(loaded.predict_action(obs, seed=3), expected)
    for name, tensor in small_policy.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert loaded.model.norm_stats == small_policy.model.norm_stats

    # pinned to the pushed commit, too; a second push of the same model makes no commit
    again = Policy.from_pretrained(repo_id, revision=pushed.commit, cache_dir=tmp_path / "other-cache")
    np.testing.assert_array_equal(again.predict_action(obs, seed=3), expected)
    assert small_policy.model.push_to_hub(repo_id, card_data=card).new_commits == 0


def test_unknown_repo_and_revision_name_what_is_missing(hub_env: HubEnv, tmp_path):
    with pytest.raises(HubRepoNotFoundError, match="tester/no-such-policy"):
        GWPPolicyModel.from_pretrained("tester/no-such-policy", cache_dir=tmp_path)
    repo_id = hub_env.new_repo_id("empty")
    from huggingface_hub import HfApi

    HfApi().create_repo(repo_id)
    with pytest.raises(HubRevisionNotFoundError, match="v9"):
        GWPPolicyModel.from_pretrained(repo_id, revision="v9", cache_dir=tmp_path)


def test_a_model_saved_under_schema_1_still_loads_and_a_future_one_is_refused(small_policy, tmp_path):  # noqa: F811
    """Schemas 2.0 and 3.0 changed only data (ids, action-free rows): a model's config and stats saved
    under 1.x read as they are; a major this code does not know is refused."""
    import json

    from schemas import SchemaVersionError

    folder = small_policy.model.save_pretrained(tmp_path / "m")
    for name in ("config.json", "norm_stats.json"):
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": "1.0"}))
    loaded = GWPPolicyModel.from_pretrained(folder)
    assert set(loaded.norm_stats) == set(small_policy.model.norm_stats)
    cfg = folder / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "schema_version": "9.0"}))
    with pytest.raises(SchemaVersionError, match=r"9\.0"):
        GWPPolicyModel.from_pretrained(folder)


def test_pushing_a_model_again_keeps_the_card_fields_set_on_the_hub(small_policy, hub_env: HubEnv):  # noqa: F811
    """A license and tags set by hand on the Hub survive the next push; what the push sets wins."""
    from huggingface_hub import HfApi

    from schemas.hub.card import card_body, card_header, with_header

    repo_id = hub_env.new_repo_id("gwp-card")
    small_policy.model.push_to_hub(repo_id, card_data={"dataset_repo": "tester/curated"})
    first = hub_env.server.files_at(repo_id)["README.md"].decode()
    header = card_header(first)
    assert "license" not in header and header["datasets"] == ["tester/curated"]
    edited = {**header, "license": "cc-by-4.0", "tags": [*header["tags"], "towels"], "language": ["en"]}
    HfApi().upload_file(
        path_or_fileobj=with_header(edited, card_body(first)).encode(),
        path_in_repo="README.md",
        repo_id=repo_id,
    )

    small_policy.model.push_to_hub(repo_id, card_data={"dataset_repo": "tester/curated-v2"})
    second = card_header(hub_env.server.files_at(repo_id)["README.md"].decode())
    assert second["license"] == "cc-by-4.0" and second["language"] == ["en"]
    assert "towels" in second["tags"] and set(header["tags"]) <= set(second["tags"])
    assert second["datasets"] == ["tester/curated-v2"]  # the push's own field wins
    # the merged card merges to itself: an unchanged push makes no commit
    assert (
        small_policy.model.push_to_hub(repo_id, card_data={"dataset_repo": "tester/curated-v2"}).new_commits
        == 0
    )
    small_policy.model.push_to_hub(repo_id, card_data={"dataset_repo": "tester/curated-v2", "license": "mit"})
    assert card_header(hub_env.server.files_at(repo_id)["README.md"].decode())["license"] == "mit"
