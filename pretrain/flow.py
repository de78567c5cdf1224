"""Rectified-flow objective and Euler sampler (ARCHITECTURE.md, "Objective and sampling").

Shape legend: B batch · P action chunk · 32 padded action dims · C, K, H, W latent video.

* Interpolation ``x_σ = (1 − σ)·x + σ·ε`` with σ ∈ [0, 1] (σ = 1 pure noise); the network
  predicts the velocity ``v = ε − x`` = dx_σ/dσ.
* Training σ: uniform u, then the shift ``σ' = s·u / (1 + (s − 1)·u)`` which pushes mass
  towards noise for s > 1. Actions and video get separate shifts (video 2, action 5).
* Loss: ``λ_a · MSE(actions, over valid dims only) + λ_v · MSE(future latents)`` with
  λ_a = 5, λ_v = 1; the components are returned for logging. The action MSE is a mean per
  sample over its valid dims, then a mean over samples, so each robot weighs the same.
* Sampling: Euler steps over a σ grid from 1 to 0 (10 steps by default, no guidance); the grid
  is shifted with the same shift as training, so steps are denser near σ = 1 where the shift
  put the training mass. ``x ← x + (σ_next − σ)·v``; for a straight path Euler is exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.objective_config import FlowConfig


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ); keeps 0 and 1 fixed, monotone in σ."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(
    batch: int, shift: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """[B] training noise levels: uniform, then shifted."""
    u = torch.rand(batch, generator=generator, device=device)
    return shift_sigma(u, shift)


def add_noise(x: Tensor, noise: Tensor, sigma_B: Tensor) -> Tensor:
    """x_σ = (1 − σ)·x + σ·ε with σ per sample [B] (or already broadcastable)."""
    s = sigma_B.reshape(sigma_B.shape + (1,) * (x.ndim - sigma_B.ndim)).to(x.dtype)
    return (1 - s) * x + s * noise


def velocity_target(x: Tensor, noise: Tensor) -> Tensor:
    return noise - x


MIN_SIGMA = 1e-4  # samplers never evaluate σ = 0; a training draw of exactly 0 must not divide by it


def velocity_of_clean(x_sigma: Tensor, clean: Tensor, sigma_B: Tensor) -> Tensor:
    """``v = (x_σ − x̂) / σ``: the velocity of a network that predicts the clean sample x̂.

    An Euler step from σ to 0 with it lands exactly on x̂, and x̂ = 0 for every σ turns any noise
    into 0: with the residual video target (``ModelConfig.video_residual``) a zero network is the
    repeated observation, where a zero *velocity* network would leave the noise in place.
    """
    s = sigma_B.reshape(sigma_B.shape + (1,) * (x_sigma.ndim - sigma_B.ndim)).to(x_sigma.dtype)
    return (x_sigma - clean) / s.clamp_min(MIN_SIGMA)


@dataclass(frozen=True)
class NoisedBatch:
    """Network inputs and regression targets for one training step."""

    actions_noisy_BP32: Tensor | None
    video_noisy_BCKHW: Tensor | None
    sigma_action_B: Tensor | None
    sigma_video_B: Tensor | None
    action_target_BP32: Tensor | None
    video_target_BCKHW: Tensor | None


def noise_batch(
    cfg: FlowConfig,
    actions_BP32: Tensor | None = None,
    future_BCKHW: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> NoisedBatch:
    """Draw σ (separate shifts) and ε for whichever of actions / future latents are given."""
    if actions_BP32 is None and future_BCKHW is None:
        raise ValueError("noise_batch: give actions_BP32, future_BCKHW or both")
    a_noisy = v_noisy = s_a = s_v = a_tgt = v_tgt = None
    if actions_BP32 is not None:
        B, dev = actions_BP32.shape[0], actions_BP32.device
        s_a = sample_sigma(B, cfg.action_shift, generator, dev)
        eps = torch.randn(actions_BP32.shape, generator=generator, device=dev, dtype=actions_BP32.dtype)
        a_noisy, a_tgt = add_noise(actions_BP32, eps, s_a), velocity_target(actions_BP32, eps)
    if future_BCKHW is not None:
        B, dev = future_BCKHW.shape[0], future_BCKHW.device
        s_v = sample_sigma(B, cfg.video_shift, generator, dev)
        eps = torch.randn(future_BCKHW.shape, generator=generator, device=dev, dtype=future_BCKHW.dtype)
        v_noisy, v_tgt = add_noise(future_BCKHW, eps, s_v), velocity_target(future_BCKHW, eps)
    return NoisedBatch(a_noisy, v_noisy, s_a, s_v, a_tgt, v_tgt)


@dataclass(frozen=True)
class FlowLoss:
    total: Tensor  # scalar, λ_a·action + λ_v·video
    action: Tensor | None  # unweighted masked MSE of the action velocity
    video: Tensor | None  # unweighted MSE of the video velocity


def masked_mse(pred_BP32: Tensor, target_BP32: Tensor, mask_B32: Tensor) -> Tensor:
    """Squared error averaged over each sample's valid dims, then over the samples that have any.

    Per sample first, so every robot weighs the same in a mixed batch whatever its action width
    (one mean over all valid entries would weigh a 14-dim robot 3.5× a 4-dim one). Samples with
    no valid dim (video without actions) add nothing; a batch of only those gives 0.
    """
    if pred_BP32.shape != target_BP32.shape:
        raise ValueError(f"masked_mse: pred {list(pred_BP32.shape)} ≠ target {list(target_BP32.shape)}")
    m_B1D = mask_B32.float()[:, None, :]
    sq_B = ((pred_BP32.float() - target_BP32.float()) ** 2 * m_B1D).sum(dim=(1, 2))
    n_B = m_B1D.sum(dim=(1, 2)) * pred_BP32.shape[1]
    has_B = n_B > 0
    per_sample_B = sq_B / n_B.clamp_min(1)
    return (per_sample_B * has_B).sum() / has_B.sum().clamp_min(1)


def flow_loss(
    cfg: FlowConfig,
    action_pred_BP32: Tensor | None = None,
    action_target_BP32: Tensor | None = None,
    action_mask_B32: Tensor | None = None,
    video_pred_BCKHW: Tensor | None = None,
    video_target_BCKHW: Tensor | None = None,
) -> FlowLoss:
    """λ_a·MSE(actions, masked) + λ_v·MSE(future latents); either term may be absent."""
    a_loss = v_loss = None
    terms = []
    if action_pred_BP32 is not None:
        if action_target_BP32 is None or action_mask_B32 is None:
            raise ValueError("flow_loss: an action prediction needs action_target_BP32 and action_mask_B32")
        a_loss = masked_mse(action_pred_BP32, action_target_BP32, action_mask_B32)
        terms.append(cfg.action_weight * a_loss)
    if video_pred_BCKHW is not None:
        if video_target_BCKHW is None or video_pred_BCKHW.shape != video_target_BCKHW.shape:
            raise ValueError("flow_loss: video prediction and target must both be given with the same shape")
        v_loss = torch.mean((video_pred_BCKHW.float() - video_target_BCKHW.float()) ** 2)
        terms.append(cfg.video_weight * v_loss)
    if not terms:
        raise ValueError("flow_loss: no prediction given")
    return FlowLoss(total=torch.stack(terms).sum(), action=a_loss, video=v_loss)


def sigma_schedule(num_steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """[num_steps + 1] noise levels from 1 down to 0, shifted."""
    if num_steps < 1:
        raise ValueError(f"sigma_schedule: num_steps must be ≥ 1, got {num_steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)


def euler_sample(velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, sigmas: Tensor) -> Tensor:
    """Integrate dx/dσ = v(x, σ) from σ[0] (= 1, x = noise) to σ[-1] (= 0).

    ``velocity_fn(x, sigma_B)`` gets the current sample and σ as a [B] tensor.
    """
    x = noise
    B = noise.shape[0]
    for s, s_next in itertools.pairwise(sigmas):
        v = velocity_fn(x, s.expand(B).to(noise.device))
        x = x + (s_next - s).to(x.dtype) * v
    return x
