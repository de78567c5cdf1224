"""Padded action dims, precision and output checks of the policy (issue #17, findings 3, 5, 7).

A tiny random ``debug`` policy (two embodiments: a 4-dim Sawyer and a 14-dim dual arm) with
synthetic statistics; nothing is trained or downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy import Policy
from policy.api import MIN_IMAGE_SIDE, ObservationError, PredictionError
from policy.inference import sample_actions, sample_joint
from policy.model import GWPPolicyModel
from schemas import get_embodiment
from tests.support.tiny_policy import tiny_policy_model

SPECS = (get_embodiment("metaworld_sawyer"), get_embodiment("agilex_dual_arm"))
SAWYER, DUAL = SPECS
P = 6


def tiny_model(seed: int = 0) -> GWPPolicyModel:
    return tiny_policy_model(SPECS, seed, chunk=P, num_future=2)


def obs_of(spec, size=(48, 40), **over) -> dict:
    rng = np.random.default_rng(1)
    obs = {
        "images": {r: rng.integers(0, 255, (*size, 3), dtype=np.uint8) for r in spec.cameras},
        "state": rng.normal(size=spec.state_dim),
        "instruction": "fold the towel",
        "embodiment": spec.name,
    }
    obs.update(over)
    return obs


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(tiny_model())


def record_action_in(model: GWPPolicyModel) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []
    handle = model.transformer.action_in.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    return seen, handle


def loader_batch(dim_by_row=(4, 14), seed=0) -> dict:
    """A batch as the shard loader gives it: uint8 frames, padded actions/state with masks."""
    g = torch.Generator().manual_seed(seed)
    Bn = len(dim_by_row)
    mask = torch.zeros(Bn, 32, dtype=torch.bool)
    for i, d in enumerate(dim_by_row):
        mask[i, :d] = True
    return {
        "obs_frames": torch.randint(0, 255, (Bn, 3, 32, 32), generator=g, dtype=torch.uint8),
        "future_frames": torch.randint(0, 255, (Bn, 3, 2, 32, 32), generator=g, dtype=torch.uint8),
        "action": torch.randn(Bn, P, 32, generator=g) * mask[:, None],
        "action_mask": mask,
        "state": torch.randn(Bn, 32, generator=g) * mask,
        "state_mask": mask,
        "embodiment_id": torch.tensor([SPECS[i % 2].id for i in range(Bn)]),
        "text_states": torch.randn(Bn, 3, 64, generator=g),  # 3 instruction tokens of 64 dims
        "text_mask": torch.tensor([[True, True, False], [True, True, True]])[:Bn],
    }


# ---------------------------------------------------------------- padded action dims


def test_training_feeds_action_in_zeros_on_padded_dims():
    model = tiny_model()
    seen, handle = record_action_in(model)
    loss, parts = model.joint_loss(loader_batch(), generator=torch.Generator().manual_seed(0))
    handle.remove()
    (noisy_BP32,) = seen
    assert noisy_BP32[0, :, 4:].abs().max() == 0 and noisy_BP32[1, :, 14:].abs().max() == 0
    assert noisy_BP32[0, :, :4].abs().min() > 0  # the valid dims are noised
    assert torch.isfinite(loss) and parts["action_loss"] > 0


def test_sampling_keeps_padded_dims_zero_at_every_step(policy):
    """The sampler must show ``action_in`` what training showed it, and return zeros there."""
    seen, handle = record_action_in(policy.model)
    try:
        actions = policy.predict_action(obs_of(SAWYER), seed=0)
        ctx, _, _ = policy.prepare(obs_of(DUAL))
        a_BP32 = sample_actions(
            policy.model.transformer, ctx, num_steps=5, generator=torch.Generator().manual_seed(1)
        )
        a_joint, _ = sample_joint(
            policy.model.transformer, ctx, num_steps=3, generator=torch.Generator().manual_seed(1)
        )
    finally:
        handle.remove()
    assert actions.shape == (P, SAWYER.action_dim) and np.isfinite(actions).all()
    sawyer_steps, dual_steps = seen[:10], seen[10:]
    assert len(sawyer_steps) == 10 and len(dual_steps) == 5 + 3
    for x in sawyer_steps:
        assert x[..., SAWYER.action_dim :].abs().max() == 0
        assert x[..., : SAWYER.action_dim].abs().max() > 0
    for x in dual_steps:
        assert x[..., DUAL.action_dim :].abs().max() == 0
    assert a_BP32[..., DUAL.action_dim :].abs().max() == 0 and a_BP32[..., : DUAL.action_dim].abs().max() > 0
    assert a_joint[..., DUAL.action_dim :].abs().max() == 0


# ---------------------------------------------------------------- precision


def test_video_target_is_formed_in_fp32_when_the_model_runs_in_bf16(monkeypatch):
    model = tiny_model()
    for p in model.transformer.parameters():  # what DeepSpeed bf16 does to every parameter
        p.data = p.data.to(torch.bfloat16)
    seen = {}
    import policy.model as policy_model

    real = policy_model.flow_loss

    def spy(cfg, **kw):
        seen.update({k: v.dtype for k, v in kw.items() if isinstance(v, torch.Tensor)})
        return real(cfg, **kw)

    monkeypatch.setattr(policy_model, "flow_loss", spy)
    loss, _ = model.joint_loss(loader_batch(), generator=torch.Generator().manual_seed(0))
    assert seen["video_target_BCKHW"] == torch.float32 and seen["action_target_BP32"] == torch.float32
    assert torch.isfinite(loss)


# normalised action units (actions span about [-2, 2] here): bf16 carries 8 significant bits, and
# 10 Euler steps through the tiny model land within ~1e-3 of fp32; 0.02 is 1 % of the range
BF16_ATOL = 0.02


def test_bf16_serving_matches_fp32_within_tolerance(tmp_path):
    folder = tiny_model(seed=4).save_pretrained(tmp_path / "policy")
    fp32 = Policy.from_pretrained(folder)
    bf16 = Policy.from_pretrained(folder, dtype=torch.bfloat16)
    tr = bf16.model.transformer
    assert tr.dtype == torch.bfloat16 and tr.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert tr.time_embed.fc1.weight.dtype == torch.float32 and tr.blocks[0].modulation.dtype == torch.float32
    assert fp32.model.transformer.dtype == torch.float32
    for spec in SPECS:
        obs = obs_of(spec)
        ctx32, _, _ = fp32.prepare(obs)
        ctx16, _, _ = bf16.prepare(obs)
        noise = torch.randn(1, P, 32, generator=torch.Generator().manual_seed(5))
        y32 = sample_actions(fp32.model.transformer, ctx32, action_noise_BP32=noise)
        y16 = sample_actions(tr, ctx16, action_noise_BP32=noise)
        assert y16.dtype == torch.float32
        err = (y16 - y32).abs().max().item()
        assert err < BF16_ATOL, f"{spec.name}: bf16 differs from fp32 by {err}"
        assert err > 0  # it really ran in bf16
        a32, a16 = fp32.predict_action(obs, seed=2), bf16.predict_action(obs, seed=2)
        assert a16.dtype == np.float32 and a16.shape == a32.shape
    pred = bf16.predict(obs_of(SAWYER), with_video=True, seed=1)
    assert pred.frames_KHW3.dtype == np.uint8
    with pytest.raises(ValueError, match="dtype must be"):
        Policy(tiny_model(), dtype=torch.int8)


# ---------------------------------------------------------------- output and input checks


@pytest.mark.parametrize("size", [(0, 0), (1, 1), (MIN_IMAGE_SIDE - 1, 40), (48, 3)])
def test_tiny_images_are_refused(policy, size):
    obs = obs_of(SAWYER)
    obs["images"] = {**obs["images"], "wrist": np.zeros((*size, 3), np.uint8)}
    with pytest.raises(
        ObservationError, match=rf"image 'wrist' is {size[1]}×{size[0]} pixels; each side must be"
    ):
        policy.predict_action(obs)


def test_smallest_allowed_image_is_served(policy):
    obs = obs_of(SAWYER, size=(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))
    assert policy.predict_action(obs, seed=0).shape == (P, SAWYER.action_dim)


def test_nan_actions_never_leave_the_policy():
    broken = Policy(tiny_model())
    with torch.no_grad():
        broken.model.transformer.action_out.proj.last_bias[SAWYER.id, 2] = float("nan")
    with pytest.raises(
        PredictionError, match=r"non-finite actions \(NaN/inf\) for embodiment 'metaworld_sawyer'"
    ):
        broken.predict_action(obs_of(SAWYER), seed=0)
    with pytest.raises(PredictionError, match="non-finite"):
        broken.predict_action_batch([obs_of(SAWYER)], [0])
    with pytest.raises(PredictionError, match="non-finite"):
        broken.predict(obs_of(SAWYER), with_video=True, seed=0)
    # another embodiment's table is untouched: its actions still come out
    assert np.isfinite(broken.predict_action(obs_of(DUAL), seed=0)).all()
