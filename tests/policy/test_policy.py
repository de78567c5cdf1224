"""GWP policy end to end: fine-tune → export → ``Policy.from_pretrained`` → robot-unit actions.

The dataset is a tiny shard folder built here with curation's own pure stages (no Ray):
simulated Meta-World episodes → ``curation.in_memory.curate_in_memory`` (compose views,
window, encode, hashed instruction tokens → statistics → normalised shards → manifest). The "pretrained" backbone is a random ``debug`` transformer saved the way a
pretraining export is (``model.safetensors`` + ``config.json`` holding the model config).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from curation.in_memory import curate_in_memory
from pipelines import finetune
from policy import Policy
from policy.api import ObservationError
from policy.inference import sample_actions
from policy.model import GWPPolicyModel, load_backbone
from pretrain.config import get_model_config
from pretrain.model import build_model
from schemas import get_embodiment
from tests.support.helpers import make_episodes
from tests.support.tiny_policy import tiny_policy_model

LENGTHS = (24, 30)


def build_shards(out: Path, lengths=LENGTHS) -> tuple[Path, list]:
    """A curated dataset (debug curation preset: p=8, Δ=2, K=2, 64×64) of simulated episodes."""
    episodes = make_episodes(lengths, size=64)
    return curate_in_memory(episodes, out), episodes


def save_backbone(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A random debug transformer saved as a pretraining export would save it."""
    torch.manual_seed(7)
    model = build_model(get_model_config("debug"))
    sd = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "train": {"steps": 1}}))
    return model.state_dict()


def observation(ep, t: int) -> dict:
    from tests.support.helpers import frames_of

    frames = frames_of(ep)
    return {
        "images": {role: f[t] for role, f in frames.items()},
        "state": ep.state[t],
        "instruction": ep.instruction,
        "embodiment": ep.embodiment,
    }


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    data, episodes = build_shards(root / "shards")
    save_backbone(root / "backbone")
    out = root / "run"
    argv = ["--preset", "debug", "--init", str(root / "backbone"), "--data", str(data), "--out", str(out)]
    argv += ["--steps", "3", "--batch-size", "2", "--ckpt-every", "0", "--no-progress"]
    assert finetune.main(argv) == 0
    return out, episodes, data


# ---------------------------------------------------------------- backbone init


def test_backbone_loads_from_any_export_layout(tmp_path):
    want = save_backbone(tmp_path / "a", prefix="transformer.")
    cfg, sd = load_backbone(tmp_path / "a")
    assert cfg == get_model_config("debug") and sd.keys() == want.keys()
    assert all(torch.equal(sd[k], want[k]) for k in want)
    model = GWPPolicyModel.from_backbone(tmp_path / "a", chunk=8, num_future=2)
    assert model.cfg.model.chunk == 8 and model.cfg.model.num_future == 2
    assert all(torch.equal(model.transformer.state_dict()[k], want[k]) for k in want)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_backbone(tmp_path / "b")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(ValueError, match="holds no model config"):
        load_backbone(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="not a Hub repo id"):
        load_backbone(tmp_path / "missing")


# ---------------------------------------------------------------- round trip


def test_finetune_exports_a_loadable_policy(finetuned):
    out, _, _ = finetuned
    final = out / "final"
    meta = json.loads((final / "config.json").read_text())
    assert meta["model_class"].endswith("GWPPolicyModel")
    cfg = meta["config"]
    assert cfg["model"]["chunk"] == 8 and cfg["model"]["num_future"] == 2  # P, K taken from the data
    assert cfg["image"] == {"width": 64, "height": 64, "fit": "stretch"}
    assert cfg["text"]["kind"] == "hashed" and cfg["text"]["dim"] == 64
    assert [e["name"] for e in cfg["embodiments"]] == ["metaworld_sawyer"]
    assert (final / "norm_stats.json").is_file() and (final / "training.json").is_file()
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2, 3]
    for h in hist:
        assert np.isfinite(h["loss"]) and h["action_loss"] > 0 and h["video_loss"] > 0
        assert h["loss"] == pytest.approx(5 * h["action_loss"] + h["video_loss"], rel=1e-5)


def test_policy_predicts_robot_units(finetuned):
    out, episodes, data = finetuned
    policy = Policy.from_pretrained(out / "final")
    ep = episodes[1]
    obs = observation(ep, 5)
    actions = policy.predict_action(obs, seed=3)
    assert actions.shape == (8, 4) and actions.dtype == np.float32 and np.isfinite(actions).all()
    np.testing.assert_array_equal(actions, policy.predict_action(obs, seed=3))

    # the same normalised sample, de-normalised by hand from the dataset's q01/q99
    ctx, _, _ = policy.prepare(obs)
    y = (
        sample_actions(
            policy.model.transformer, ctx, num_steps=10, shift=5.0, generator=torch.Generator().manual_seed(3)
        )[0, :, :4]
        .double()
        .numpy()
    )
    manifest = json.loads((data / "meta" / "manifest.json").read_text())
    st = manifest["stats"]["metaworld_sawyer"]["action"]
    lo, hi = np.asarray(st["q01"]), np.asarray(st["q99"])
    np.testing.assert_allclose(actions, y * (hi - lo) / 2 + (lo + hi) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(actions, y, atol=1e-3)  # really de-normalised

    # joint decoding: same actions for the same seed (video cannot reach actions), plus frames; equal
    # up to float rounding, as the cross-attention kernel blocks more queries otherwise over the
    # instruction's several tokens (bit-exact with equal shapes: tests/test_policy_inference.py)
    pred = policy.predict(obs, with_video=True, seed=3)
    np.testing.assert_allclose(pred.actions_PDa, actions, rtol=0, atol=1e-6)
    assert pred.frames_KHW3.shape == (2, 64, 64, 3) and pred.frames_KHW3.dtype == np.uint8
    assert policy.predict(obs, with_video=False, seed=3).frames_KHW3 is None
    batch = policy.predict_action_batch([obs, observation(episodes[0], 2)], [3, 4])
    np.testing.assert_allclose(batch[0], actions, atol=1e-5)


# ---------------------------------------------------------------- errors and delta dims


@pytest.fixture(scope="module")
def small_policy() -> Policy:
    specs = (get_embodiment("metaworld_sawyer"), get_embodiment("agilex_dual_arm"))
    return Policy(tiny_policy_model(specs, chunk=6))


def _obs(spec, **over):
    rng = np.random.default_rng(1)
    obs = {
        "images": {r: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for r in spec.cameras},
        "state": rng.normal(size=spec.state_dim),
        "instruction": "fold the towel",
        "embodiment": spec.name,
    }
    obs.update(over)
    return obs


def test_delta_dims_get_the_current_state_back(small_policy):
    spec = get_embodiment("agilex_dual_arm")
    obs = _obs(spec)
    actions = small_policy.predict_action(obs, seed=0)
    ctx, _, state = small_policy.prepare(obs)
    y = sample_actions(small_policy.model.transformer, ctx, generator=torch.Generator().manual_seed(0))
    y = y[0, :, : spec.action_dim].double().numpy()
    st = small_policy.model.norm_stats[spec.name].action
    lo, hi = np.asarray(st.q01), np.asarray(st.q99)
    want = y * (hi - lo) / 2 + (lo + hi) / 2
    ref = np.asarray(spec.delta_state_index())
    want[:, ref >= 0] += state[ref[ref >= 0]]
    assert actions.shape == (6, 14)
    np.testing.assert_allclose(actions, want, rtol=1e-5, atol=1e-5)


def test_bad_observations_get_clear_errors(small_policy):
    sawyer = get_embodiment("metaworld_sawyer")
    good = _obs(sawyer)
    assert small_policy.predict_action(good).shape == (6, 4)
    with pytest.raises(ObservationError, match=r"missing camera\(s\) \['wrist'\]"):
        small_policy.predict_action(_obs(sawyer, images={"high": good["images"]["high"]}))
    with pytest.raises(ObservationError, match=r"\['left_wrist'\] are not cameras"):
        small_policy.predict_action(
            _obs(sawyer, images={**good["images"], "left_wrist": good["images"]["high"]})
        )
    with pytest.raises(
        ObservationError, match=r"state of 'metaworld_sawyer' must have shape \[4\].*got \[5\]"
    ):
        small_policy.predict_action(_obs(sawyer, state=np.zeros(5)))
    with pytest.raises(ObservationError, match="NaN"):
        small_policy.predict_action(_obs(sawyer, state=np.array([0, np.nan, 0, 0])))
    with pytest.raises(ObservationError, match=r"unknown embodiment 'ur5'.*trained on \['metaworld_sawyer'"):
        small_policy.predict_action(_obs(sawyer, embodiment="ur5"))
    no_emb = {k: v for k, v in good.items() if k != "embodiment"}
    with pytest.raises(ObservationError, match="'embodiment' is required"):
        small_policy.predict_action(no_emb)
    with pytest.raises(ObservationError, match=r"image 'high' must be uint8 \[H, W, 3\]"):
        small_policy.predict_action(
            _obs(sawyer, images={**good["images"], "high": np.zeros((8, 8), np.float32)})
        )
    with pytest.raises(ObservationError, match="instruction"):
        small_policy.predict_action(_obs(sawyer, instruction=""))
