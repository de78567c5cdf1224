"""The policy's two guarantees, exactly, in fp32 on the debug preset:

* causal: future-video tokens (their noise or their content) cannot change the actions — in the
  training pass (``GWPPolicyModel.joint_loss``) and in joint Euler sampling;
* the context cache is exact: cached action-only decoding equals the uncached one.

Both model kinds: the shared backbone (``debug``) and the action expert (``debug-mot``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from policy.inference import Context, sample_actions, sample_joint
from policy.model import GWPPolicyModel, PolicyConfig
from pretrain.config import get_model_config
from pretrain.model import ModelOutput
from schemas import get_embodiment

P, K, B = 8, 2, 2
SPECS = (get_embodiment("metaworld_sawyer"), get_embodiment("agilex_dual_arm"))


@pytest.fixture(scope="module", params=["debug", "debug-mot"])  # the shared backbone; the action expert
def model(request) -> GWPPolicyModel:
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_model_config(request.param), chunk=P, num_future=K)
    return GWPPolicyModel(PolicyConfig(model=cfg, embodiments=SPECS)).eval()


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 32, dtype=torch.bool)
    mask[0, :4], mask[1, :14] = True, True
    return {
        "obs_frames": torch.rand(B, 3, 32, 32, generator=g) * 2 - 1,
        "future_frames": torch.rand(B, 3, K, 32, 32, generator=g) * 2 - 1,
        "action": torch.randn(B, P, 32, generator=g) * mask[:, None],
        "action_mask": mask,
        "state": torch.randn(B, 32, generator=g),
        "state_mask": torch.ones(B, 32, dtype=torch.bool),
        "embodiment_id": torch.tensor([SPECS[0].id, SPECS[1].id]),
        "text_states": torch.randn(B, 5, 64, generator=g),
        "text_mask": torch.tensor([[True] * 5, [True] * 3 + [False] * 2]),
    }


def context(model: GWPPolicyModel, seed: int = 1) -> Context:
    b = make_batch(seed)
    obs, _ = model.batch_latents(b)
    return Context(obs, b["state"], b["embodiment_id"], *model.batch_text(b, obs.device))


def test_training_pass_actions_ignore_future_video(model):
    """Same noise draws; the future frames' content differs → action loss bit-identical."""
    base = make_batch()
    other = dict(base, future_frames=-base["future_frames"])
    with torch.no_grad():
        _, p1 = model.joint_loss(base, generator=torch.Generator().manual_seed(5))
        _, p2 = model.joint_loss(other, generator=torch.Generator().manual_seed(5))
    assert torch.equal(p1["action_loss"], p2["action_loss"])
    assert not torch.equal(p1["video_loss"], p2["video_loss"])  # the video really changed

    # the forward pass itself: action velocities bit-identical, for new video noise and new content
    obs, fut = model.batch_latents(base)
    g = torch.Generator().manual_seed(9)
    acts = torch.randn(B, P, 32, generator=g)
    s_a, s_v = torch.tensor([0.3, 0.9]), torch.tensor([0.6, 0.2])
    text, text_mask = model.batch_text(base, obs.device)

    def run(fut_noisy, attention="block_causal"):
        with torch.no_grad():
            return model.transformer(
                obs, fut_noisy, base["state"], base["embodiment_id"], acts, s_a, s_v, text, text_mask,
                mode="joint", attention=attention,
            )  # fmt: skip

    v1 = torch.randn(fut.shape, generator=g)
    v2 = torch.randn(fut.shape, generator=g)
    a1, a2, a3 = (run(v).action_velocity_BP32 for v in (v1, v2, torch.zeros_like(v1)))
    assert torch.equal(a1, a2) and torch.equal(a1, a3)
    # control: without the block-causal mask the same change does reach the actions
    f1, f2 = (run(v, "full").action_velocity_BP32 for v in (v1, v2))
    assert (f1 - f2).abs().max() > 1e-4


def test_training_loss_counts_only_the_embodiments_action_dims(model):
    """A forward that is exact on valid dims and wildly wrong on padded ones has ~0 action loss."""
    b = make_batch()
    x = b["action"]

    def oracle(obs, fut, state, emb, acts_noisy, s_a, s_v, text, text_mask, mode):
        exact = (acts_noisy - x) / s_a[:, None, None]  # = ε − x, the velocity target
        garbage = torch.full_like(exact, 1e3)
        return ModelOutput(torch.where(b["action_mask"][:, None], exact, garbage), torch.zeros_like(fut))

    loss, parts = model.joint_loss(b, forward=oracle, generator=torch.Generator().manual_seed(2))
    assert parts["action_loss"] < 1e-8
    assert parts["video_loss"] > 0.1  # zeros are no video prediction
    assert loss.item() == pytest.approx(
        5 * parts["action_loss"].item() + parts["video_loss"].item(), rel=1e-6
    )
    # and the real model: gradients reach the action decoder
    loss, _ = model.joint_loss(b, generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert model.transformer.action_out.proj.last_weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_joint_sampling_actions_ignore_video_noise(model):
    ctx = context(model)
    g = torch.Generator().manual_seed(3)
    a_noise = torch.randn(B, P, 32, generator=g)
    runs = [
        sample_joint(model.transformer, ctx, action_noise_BP32=a_noise,
                     video_noise_BCKhw=torch.randn(B, 48, K, 8, 8, generator=g))
        for _ in range(2)
    ]  # fmt: skip
    (a1, v1), (a2, v2) = runs
    assert torch.equal(a1, a2)
    assert (v1 - v2).abs().max() > 1e-3
    # and they are the action-only actions for the same noise
    assert torch.equal(a1, sample_actions(model.transformer, ctx, action_noise_BP32=a_noise, use_cache=False))


def test_cached_action_only_equals_uncached(model):
    ctx = context(model, seed=4)
    a_noise = torch.randn(B, P, 32, generator=torch.Generator().manual_seed(4))
    cached = sample_actions(model.transformer, ctx, action_noise_BP32=a_noise)
    uncached = sample_actions(model.transformer, ctx, action_noise_BP32=a_noise, use_cache=False)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=0)
    assert cached.abs().max() > 0.1  # a real sample, not zeros
    # the schedule matters: fewer steps give a different sample
    assert (
        sample_actions(model.transformer, ctx, action_noise_BP32=a_noise, num_steps=3) - cached
    ).abs().max() > 1e-4


def test_fixed_noise_is_checked(model):
    ctx = context(model)
    with pytest.raises(ValueError, match=r"fixed noise must have shape \[2, 8, 32\]"):
        sample_actions(model.transformer, ctx, action_noise_BP32=torch.zeros(2, 7, 32))
