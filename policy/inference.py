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
  the cache is checked against). Each cached step is one call of :func:`euler_step`, or of its
  compiled form (:class:`CompiledStep`, below).
* **joint** (:func:`sample_joint`): A and V are denoised together with ``mode="joint"``, every
  step over C + A + V tokens, and the future latents are returned for the codec to decode.
  Because V cannot reach A, the actions equal the action-only ones for the same action noise.

**Padded action dims** (``Context.action_mask_B32``, the embodiment's valid dims): the initial
noise and every velocity are masked, so padded dims are exactly 0 at every step — what
``action_in`` saw in training (:mod:`policy.model`: no noise on padded dims) — and 0 in the
result. Without a mask every dim is treated as valid.

**Per chunk, not per step**: what depends only on the step grid and the geometry — RoPE tables
and the time embedding and modulation of every σ — is computed once per chunk and each step only
takes its slice: ``ActionVideoTransformer.action_steps`` for the cached action-only sampler,
:func:`pretrain.step_tables.chunk_tables` (passed to the forward as ``tables=``) for the uncached
and the joint ones. The numbers are those of building them at every step, bit for bit.

**Compiled step** (:class:`CompiledStep`, ``Policy(..., compile=True)``): :func:`euler_step` —
``forward_actions`` on the cached context plus the Euler update — has no host sync and builds no
table, so ``torch.compile(fullgraph=True)`` turns it into one graph (a graph break is an error,
not a silent slowdown). Its inputs are the same kinds of tensors at every step (the step's table
slices and Δσ are tensors, not Python numbers), so one compilation serves every step and chunk
of a shape. On CUDA the default mode is ``reduce-overhead``: CUDA graphs replay the step's few
hundred small kernels with one launch, which is where batch-1 decoding spends its time; each
step's output is cloned out of the graph's memory pool, as a replay overwrites it. On CPU there
are no CUDA graphs and the default mode is inductor's ``default`` (fused elementwise code
around the same matmuls): ``max-autotune-no-cudagraphs`` would benchmark GEMM templates at
compile time for matmuls this small. Guided sampling (real-time chunking) differentiates
through the velocity and stays eager.

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

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.flow import sigma_schedule, velocity_of_clean
from pretrain.model import ActionSteps, ActionVideoTransformer, ContextCache
from pretrain.step_tables import chunk_tables


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


def euler_step(
    model: ActionVideoTransformer,
    cache: ContextCache,
    x_BP32: Tensor,
    steps: ActionSteps,
    dt: Tensor,
    valid_B1D: Tensor | None,
) -> Tensor:
    """One cached action-only Euler step: x + Δσ·v(x), padded dims kept at 0.

    ``steps`` is this step's tables (``ActionSteps.at(i)``), ``dt`` = σ[i+1] − σ[i] as a 0-dim
    tensor: the same kinds of inputs at every step, so a compiled step never recompiles.
    """
    v = model.forward_actions(cache, x_BP32.to(model.dtype), steps=steps, step=0).float()
    return x_BP32 + dt * _masked(v, valid_B1D)


StepFn = Callable[[ActionVideoTransformer, ContextCache, Tensor, ActionSteps, Tensor, Tensor | None], Tensor]

# modes of torch.compile that capture CUDA graphs on a CUDA device
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_compile_mode(device: torch.device | str) -> str:
    """``reduce-overhead`` (CUDA graphs) on CUDA, inductor's ``default`` elsewhere (module docstring)."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


class CompiledStep:
    """:func:`euler_step` under ``torch.compile(fullgraph=True, mode=mode)``; compiles on first use."""

    def __init__(self, mode: str = "default") -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        self.mode = mode
        self._fn = torch.compile(euler_step, fullgraph=True, mode=mode)

    def __call__(
        self,
        model: ActionVideoTransformer,
        cache: ContextCache,
        x_BP32: Tensor,
        steps: ActionSteps,
        dt: Tensor,
        valid_B1D: Tensor | None,
    ) -> Tensor:
        if self.mode in _CUDAGRAPH_MODES and x_BP32.is_cuda:
            # every step is a new CUDA-graph replay, which overwrites the last one's output: keep a copy
            torch.compiler.cudagraph_mark_step_begin()
            return self._fn(model, cache, x_BP32, steps, dt, valid_B1D).clone()
        return self._fn(model, cache, x_BP32, steps, dt, valid_B1D)


def _takes_tables(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` accepts per-chunk tables (another model kind may not)."""
    return "tables" in inspect.signature(model.forward).parameters


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
    step_fn: StepFn | None = None,
) -> Tensor:
    """Normalised actions [B, P, 32] (float32) by action-only decoding (``guide``: real-time chunking).

    ``step_fn``: the cached step (:func:`euler_step`, the default, or a :class:`CompiledStep`);
    only for cached, unguided sampling.
    """
    if step_fn is not None and (guide is not None or not use_cache):
        raise ValueError("sample_actions: step_fn runs cached, unguided sampling only")
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
        if guide is None:
            step_fn = step_fn or euler_step
            dts = sigmas[1:] - sigmas[:-1]
            for i in range(num_steps):
                x = step_fn(model, cache, x, steps.at(i), dts[i], valid)
            return x

        def velocity(x_BP32: Tensor, i: int) -> Tensor:
            return model.forward_actions(cache, x_BP32.to(model.dtype), steps=steps, step=i).float()
    else:
        tables = None
        if _takes_tables(model):
            grid_BS2 = torch.stack([torch.zeros_like(sigmas[:-1]), sigmas[:-1]], dim=-1).expand(B, -1, -1)
            latent_hw = tuple(ctx.obs_latent_BC1hw.shape[-2:])
            tables = chunk_tables(model, grid_BS2, latent_hw, state=ctx.state_B32 is not None, actions=True)

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
                **({} if tables is None else {"tables": tables.at(i)}),
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
    tables = None
    if _takes_tables(model):  # groups: context (σ = 0), actions, future latents
        grid_BS3 = torch.stack([torch.zeros_like(sa[:-1]), sa[:-1], sv[:-1]], dim=-1).expand(B, -1, -1)
        tables = chunk_tables(
            model, grid_BS3, (h, w), state=ctx.state_B32 is not None, actions=True, future_frames=K
        )
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
            **({} if tables is None else {"tables": tables.at(i)}),
        )
        xa = xa + (sa[i + 1] - sa[i]) * _masked(out.action_velocity_BP32.float(), valid)
        vv = out.video_velocity_BCKHW.float()
        if cfg.video_residual:  # the head predicts the clean residual
            vv = velocity_of_clean(xv, vv, sv[i].expand(B))
        xv = xv + (sv[i + 1] - sv[i]) * vv
    return xa, xv
