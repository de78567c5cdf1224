"""Rectified flow: interpolation, targets, shifted σ, masked loss, Euler sampler."""

from __future__ import annotations

import pytest
import torch

from pretrain.flow import (
    FlowConfig,
    add_noise,
    euler_sample,
    flow_loss,
    masked_mse,
    noise_batch,
    sample_sigma,
    shift_sigma,
    sigma_schedule,
    velocity_target,
)


def test_shift_sigma_formula_endpoints_and_monotonicity():
    s = torch.linspace(0, 1, 101)
    for shift in (1.0, 2.0, 5.0):
        out = shift_sigma(s, shift)
        assert out[0] == 0 and out[-1] == 1
        assert (out[1:] > out[:-1]).all()
    torch.testing.assert_close(shift_sigma(s, 1.0), s)
    assert shift_sigma(torch.tensor(0.5), 5.0).item() == pytest.approx(2.5 / 3)
    assert (shift_sigma(s, 5.0) >= shift_sigma(s, 2.0)).all()


def test_sample_sigma_distribution():
    g = torch.Generator().manual_seed(0)
    sig = sample_sigma(20000, 5.0, generator=g)
    assert sig.min() >= 0 and sig.max() <= 1
    # σ' < 0.5  ⇔  u < 1/(s+1) = 1/6
    assert (sig < 0.5).float().mean().item() == pytest.approx(1 / 6, abs=0.015)
    assert (sample_sigma(20000, 2.0, generator=g) < 0.5).float().mean().item() == pytest.approx(
        1 / 3, abs=0.015
    )


def test_interpolation_and_velocity():
    x, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(add_noise(x, eps, torch.zeros(3)), x)
    torch.testing.assert_close(add_noise(x, eps, torch.ones(3)), eps)
    s1, s2 = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.3, 0.7, 0.9])
    slope = (add_noise(x, eps, s2) - add_noise(x, eps, s1)) / (s2 - s1)[:, None, None]
    torch.testing.assert_close(slope, velocity_target(x, eps), atol=1e-5, rtol=1e-5)


def test_noise_batch_is_consistent():
    cfg = FlowConfig()
    a, v = torch.randn(2, 48, 32), torch.randn(2, 8, 4, 6, 6)
    nb = noise_batch(cfg, a, v, generator=torch.Generator().manual_seed(0))
    assert nb.actions_noisy_BP32.shape == a.shape and nb.video_noisy_BCKHW.shape == v.shape
    assert nb.sigma_action_B.shape == nb.sigma_video_B.shape == (2,)
    # x = x_σ − σ·(ε − x)
    torch.testing.assert_close(
        nb.actions_noisy_BP32 - nb.sigma_action_B[:, None, None] * nb.action_target_BP32, a
    )
    torch.testing.assert_close(
        nb.video_noisy_BCKHW - nb.sigma_video_B[:, None, None, None, None] * nb.video_target_BCKHW, v
    )
    only_v = noise_batch(cfg, future_BCKHW=v)
    assert only_v.actions_noisy_BP32 is None and only_v.sigma_action_B is None
    with pytest.raises(ValueError, match="give actions_BP32"):
        noise_batch(cfg)


def test_loss_masks_invalid_dims_and_weights_terms():
    cfg = FlowConfig()
    tgt_a = torch.randn(2, 4, 32)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :5] = True
    pred_a = tgt_a.clone()
    pred_a[:, :, 10:] += 100.0  # errors only in padded dims
    assert masked_mse(pred_a, tgt_a, mask).item() == 0.0
    pred_a[0, :, 0] += 2.0  # error 2 on 4 of sample 0's 3·4 = 12 valid entries; sample 1 exact
    assert masked_mse(pred_a, tgt_a, mask).item() == pytest.approx((4.0 * 4 / 12 + 0.0) / 2)
    tgt_v = torch.randn(2, 3, 2, 4, 4)
    pred_v = tgt_v + 1.0
    loss = flow_loss(cfg, pred_a, tgt_a, mask, pred_v, tgt_v)
    assert loss.video.item() == pytest.approx(1.0)
    assert loss.total.item() == pytest.approx(5 * loss.action.item() + 1 * loss.video.item())
    only_v = flow_loss(cfg, video_pred_BCKHW=pred_v, video_target_BCKHW=tgt_v)
    assert only_v.action is None and only_v.total.item() == pytest.approx(1.0)
    # a sample without valid dims contributes nothing and does not divide by zero
    assert masked_mse(pred_a, tgt_a, torch.zeros(2, 32, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="needs action_target_BP32"):
        flow_loss(cfg, pred_a)


def test_schedule_and_euler_are_exact_on_straight_paths():
    sig = sigma_schedule(10, shift=5.0)
    assert sig.shape == (11,) and sig[0] == 1 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    x0 = torch.randn(3, 6)

    def oracle(x, sigma_B):  # the exact velocity when the data is the single point x0
        return (x - x0) / sigma_B[:, None]

    noise = torch.randn(3, 6)
    for steps in (1, 3, 10):
        out = euler_sample(oracle, noise, sigma_schedule(steps, 2.0))
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    # a wrong velocity field does not land on the data
    assert (euler_sample(lambda x, s: torch.zeros_like(x), noise, sig) - x0).abs().max() > 0.1


def test_euler_matches_a_gaussian_flow():
    """Data N(μ, τ²): the exact velocity is linear in x; 200 Euler steps reach the data law."""
    mu, tau = 2.0, 0.5

    def velocity(x, s_B):
        s = s_B[:, None]
        var = (1 - s) ** 2 * tau**2 + s**2
        e_x0 = mu + (1 - s) * tau**2 * (x - (1 - s) * mu) / var
        return (x - e_x0) / s.clamp_min(1e-6)

    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = euler_sample(velocity, noise, sigma_schedule(200).double())
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.std().item() == pytest.approx(tau, abs=0.02)


def test_flow_config_validation():
    with pytest.raises(ValueError, match="action_shift"):
        FlowConfig(action_shift=0)
    with pytest.raises(ValueError, match="num_steps"):
        FlowConfig(num_steps=0)
