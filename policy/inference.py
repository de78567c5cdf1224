"""Euler sampling of the GWP policy: action-only (cached context) and joint (actions + video).

Shape legend: B batch · P action chunk · 32 padded dims · C, K, h, w latent video · L text tokens.

Both samplers integrate the rectified flow from σ = 1 (noise) to σ = 0 in ``num_steps`` Euler
steps (10 by default, no guidance) over :func:`pretrain.flow.sigma_schedule` grids shifted like
training: the action grid with the action shift, the video grid with the video shift. At step i
the actions sit at σ_a[i] and the future latents at σ_v[i]; each moves by (σ[i+1] − σ[i])·v.

* **action-only** (:func:`sample_actions`): the context C (state token + observation latent) is
  clean, and C attends only to C, so its per-layer keys/values are the same at every step. It
  runs once (``ActionVideoTransformer.encode_context``) and the P action tokens are denoised
  against that cache (``forward_actions``): per step P tokens instead of C + P.
  ``use_cache=False`` runs the full ``mode="action"`` forward each step instead (the reference
  the cache is checked against).
* **joint** (:func:`sample_joint`): A and V are denoised together with ``mode="joint"``, every
  step over C + A + V tokens, and the future latents are returned for the codec to decode.
  Because V cannot reach A, the actions equal the action-only ones for the same action noise.

**Padded action dims** (``Context.action_mask_B32``, the embodiment's valid dims): the initial
noise and every velocity are masked, so padded dims are exactly 0 at every step — what
``action_in`` saw in training (:mod:`policy.model`: no noise on padded dims) — and 0 in the
result. Without a mask every dim is treated as valid.

**Per chunk, not per step**: the action-only sampler computes the action tokens' RoPE and the
time tables of all its σ once (``ActionVideoTransformer.action_steps``); each step only slices.

Noise: pass ``action_noise_BP32`` / ``video_noise_BCKhw`` for fixed-noise runs (tests), or a
``generator``; otherwise the global torch RNG is used.

**Real-time chunking** (``guide=``, :class:`Guide`; Black, Galliker & Levine 2025): the new chunk
is inpainted so that it continues the previous one. At every step the clean chunk the model
currently predicts, x̂ = x − σ·v(x), is pulled toward the target Y (the previous chunk's
remaining actions) on the positions and dims ``weights_BP32`` selects, by the vector-Jacobian
product g = ((Y − x̂)·W)ᵀ ∂x̂/∂x, scaled by the paper's weight min(β, ((1−σ)² + σ²) / (σ(1−σ)))
(its τ is our 1 − σ; at σ = 1 the weight is β). The step becomes x += (σ' − σ)·(v − w·g). With
the cached context a VJP costs one backward through the P action tokens only. Without a guide
the loop is the plain one above, unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.flow import sigma_schedule, velocity_of_clean
from pretrain.model import ActionVideoTransformer


@dataclass(frozen=True)
class Context:
    """The conditioning of one batch of observations, already in model space."""

    obs_latent_BC1hw: Tensor
    state_B32: Tensor | None
    embodiment_id_B: Tensor
    text_BLD: Tensor
    text_mask_BL: Tensor | None = None
    action_mask_B32: Tensor | None = None  # True = a dim the embodiment uses; None = all

    @property
    def batch(self) -> int:
        return self.obs_latent_BC1hw.shape[0]

    def action_valid(self, like: Tensor) -> Tensor | None:
        """[B, 1, 32] float mask of valid action dims on ``like``'s device, or None."""
        if self.action_mask_B32 is None:
            return None
        m = self.action_mask_B32
        if tuple(m.shape) != (self.batch, like.shape[-1]):
            raise ValueError(
                f"action_mask_B32 must have shape [{self.batch}, {like.shape[-1]}], got {list(m.shape)}"
            )
        return m.to(device=like.device, dtype=torch.float32)[:, None, :]


def _masked(x: Tensor, valid_B1D: Tensor | None) -> Tensor:
    return x if valid_B1D is None else x * valid_B1D


@dataclass(frozen=True)
class Guide:
    """The inpainting target of real-time chunking, in the model's normalised action space."""

    target_BP32: Tensor  # Y: the previous chunk's actions re-indexed to the new chunk's steps
    weights_BP32: Tensor  # W in [0, 1]: 1 on the frozen prefix, decaying over the overlap, 0 after
    max_weight: float = 5.0  # β, the clip on the guidance weight


def guidance_weight(sigma: float, max_weight: float) -> float:
    """The paper's min(β, (1−τ) / (τ·r²)), r² = (1−τ)² / (τ² + (1−τ)²), with τ = 1 − σ."""
    if sigma >= 1.0 or sigma <= 0.0:
        return max_weight if sigma >= 1.0 else 0.0
    return min(max_weight, ((1 - sigma) ** 2 + sigma**2) / (sigma * (1 - sigma)))


def _guided(velocity, guide: Guide, x: Tensor, s: Tensor, i: int) -> Tensor:
    """v − w·g at (x, σ = s, Euler step i): the velocity with the inpainting correction folded in."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        v = velocity(x_in, i)
        x_clean = x_in - s * v
        err = (guide.target_BP32 - x_clean) * guide.weights_BP32
        (g,) = torch.autograd.grad(x_clean, x_in, grad_outputs=err.detach())
    return v.detach() - guidance_weight(float(s), guide.max_weight) * g


def _noise(
    shape: tuple[int, ...], given: Tensor | None, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    if given is not None:
        if tuple(given.shape) != shape:
            raise ValueError(f"fixed noise must have shape {list(shape)}, got {list(given.shape)}")
        return given.to(device=like.device, dtype=torch.float32)
    return torch.randn(shape, generator=generator, device=like.device, dtype=torch.float32)


@torch.no_grad()
def sample_actions(
    model: ActionVideoTransformer,
    ctx: Context,
    *,
    num_steps: int = 10,
    shift: float = 5.0,
    action_noise_BP32: Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    guide: Guide | None = None,
) -> Tensor:
    """Normalised actions [B, P, 32] (float32) by action-only decoding (``guide``: real-time chunking)."""
    cfg = model.cfg
    B = ctx.batch
    x = _noise((B, cfg.chunk, cfg.action_dim), action_noise_BP32, generator, ctx.obs_latent_BC1hw)
    valid = ctx.action_valid(x)
    x = _masked(x, valid)
    sigmas = sigma_schedule(num_steps, shift, device=x.device)
    if use_cache:
        cache = model.encode_context(
            ctx.obs_latent_BC1hw,
            state_B32=ctx.state_B32,
            embodiment_id_B=ctx.embodiment_id_B,
            text_BLD=ctx.text_BLD,
            text_mask_BL=ctx.text_mask_BL,
        )
        steps = model.action_steps(cache, sigmas[:-1].expand(B, num_steps))

        def velocity(x_BP32: Tensor, i: int) -> Tensor:
            return model.forward_actions(cache, x_BP32.to(model.dtype), steps=steps, step=i).float()
    else:

        def velocity(x_BP32: Tensor, i: int) -> Tensor:
            s_B = sigmas[i].expand(B)
            out = model(
                ctx.obs_latent_BC1hw,
                None,
                ctx.state_B32,
                ctx.embodiment_id_B,
                x_BP32.to(model.dtype),
                s_B,
                None,
                ctx.text_BLD,
                ctx.text_mask_BL,
                "action",
            )
            return out.action_velocity_BP32.float()

    for i, (s, s_next) in enumerate(itertools.pairwise(sigmas)):
        v = velocity(x, i) if guide is None else _guided(velocity, guide, x, s, i)
        x = x + (s_next - s) * _masked(v, valid)
    return x


@torch.no_grad()
def sample_joint(
    model: ActionVideoTransformer,
    ctx: Context,
    *,
    num_future: int | None = None,
    num_steps: int = 10,
    action_shift: float = 5.0,
    video_shift: float = 2.0,
    action_noise_BP32: Tensor | None = None,
    video_noise_BCKhw: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(normalised actions [B, P, 32], future latents [B, C, K, h, w])``, both float32."""
    cfg = model.cfg
    B = ctx.batch
    _, C, _, h, w = ctx.obs_latent_BC1hw.shape
    K = num_future or cfg.future_latent_frames
    like = ctx.obs_latent_BC1hw
    xa = _noise((B, cfg.chunk, cfg.action_dim), action_noise_BP32, generator, like)
    valid = ctx.action_valid(xa)
    xa = _masked(xa, valid)
    xv = _noise((B, C, K, h, w), video_noise_BCKhw, generator, like)
    sa = sigma_schedule(num_steps, action_shift, device=xa.device)
    sv = sigma_schedule(num_steps, video_shift, device=xa.device)
    for i in range(num_steps):
        out = model(
            ctx.obs_latent_BC1hw,
            xv.to(model.dtype),
            ctx.state_B32,
            ctx.embodiment_id_B,
            xa.to(model.dtype),
            sa[i].expand(B),
            sv[i].expand(B),
            ctx.text_BLD,
            ctx.text_mask_BL,
            "joint",
        )
        xa = xa + (sa[i + 1] - sa[i]) * _masked(out.action_velocity_BP32.float(), valid)
        vv = out.video_velocity_BCKHW.float()
        if cfg.video_residual:  # the head predicts the clean residual
            vv = velocity_of_clean(xv, vv, sv[i].expand(B))
        xv = xv + (sv[i + 1] - sv[i]) * vv
    return xa, xv
