"""The action-centred video transformer shared by pretraining and the policy (ARCHITECTURE.md, "The model").

Shape legend (suffixes on tensor names):
    B batch · C latent channels · F=1 observation frame · K future latent frames ·
    H, W latent height/width · h, w token grid (H/ph, W/pw) · P action chunk (cfg.chunk) ·
    32 padded action/state dims · L text tokens · N tokens · G timestep groups ·
    D model width, except in ``text_BLD`` where it is the text-encoder width cfg.text_dim

Architecture (Wan2.x DiT, so that a Wan checkpoint maps onto it; see ``pretrain/layers.py``):

* video tokens: Conv3d patch embedding (1, 2, 2) of the latents; the observation frame is
  frame 0, future frames 1..K; output norm + linear + unpatchify back to ``[B, C, K, H, W]``.
* time: sinusoidal features of σ·1000 → MLP → ``temb`` (D) → SiLU → linear → 6·D modulation.
  **Per-token timesteps**: context tokens 0, action tokens σ_a, future frames σ_v (per sample
  ``[B]`` or per frame ``[B, K]``), as Wan2.2-TI2V's expanded timesteps.
* text: MLP text_dim → D, then cross-attention in every block (optional padding mask).
* state and actions: embodiment-specific MLPs (per-embodiment first/last layer, shared inner
  layers) on the 32-dim padded vectors; actions decoded by a third such MLP after their own
  modulated output norm.

Token groups in one self-attention sequence, in this order::

    C  [state token] + h·w observation tokens   timestep 0     attends to C
    A  P action tokens                          σ_a (or 0)     attends to C, A
    V  K·h·w future-frame tokens                σ_v            attends to C, A, V

Modes of ``forward``:

    joint     noisy A and noisy V; returns both velocities (policy training, joint inference)
    pretrain  clean actions as conditioning at timestep 0, or none (human video; per sample
              with ``actions_present_B``); noisy V; returns the video velocity
    video     no A tokens; noisy V; returns the video velocity
    action    no V tokens; noisy A; returns the action velocity

**Action expert** (``ModelConfig.action_expert_dim`` > 0, ``pretrain/action_expert.py``):
state and action tokens run through their own narrower blocks, the visual tokens through
these; one self-attention with the same mask spans both (GWP-0.5's Mixture-of-Transformers).
``build_model`` / ``model_class`` pick the kind from the config.

Because C attends only to C, its keys/values never change while A and V are denoised:
``encode_context`` runs C once and caches its per-layer K/V (and the text K/V), and
``forward_actions`` runs only the P action tokens against that cache — action-only decoding.

**Precision.** ``model.to(torch.bfloat16)`` keeps the fp32-critical tensors in float32, as
diffusers' ``_keep_in_fp32_modules`` does for Wan: the time embedding, the time modulation, the
per-block and output-head modulation tables and the cross-attention LayerNorm
(:data:`KEEP_FP32`). Under DeepSpeed bf16, which casts every parameter itself, those tensors
hold bf16-rounded fp32 master weights; either way they are *computed* in float32 (the time
layers are ``FP32Linear``; modulation and norms run in float32 in ``pretrain/layers.py``), as
Wan's reference asserts for its modulation.

**No host syncs in the forward.** Value checks (embodiment ids in range, no sample without a
text token) raise a ``ValueError`` on CPU tensors in eager mode; on an accelerator or under
``torch.compile`` they become ``torch._assert_async``, which needs no ``bool()`` of a device
tensor, so the forward neither waits for the device nor breaks a compiled graph.

``attention="full"`` drops the block-causal mask (every token sees every token). It exists to
run a converted Wan checkpoint exactly as Wan does (``pretrain/wan_adapter.py``); it breaks the
causal property and is not used for training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.config import ModelConfig
from pretrain.layers import (
    KV,
    Block,
    EmbodimentMLP,
    FP32Linear,
    OutputHead,
    Rope,
    Runs,
    TwoLayerMLP,
    rope_1d,
    sinusoidal_embedding,
)
from pretrain.model_inputs import ATTENTION, MODES, forward_plan
from pretrain.model_inputs import check_values as _check_values
from pretrain.model_inputs import err as _err
from pretrain.model_inputs import expect as _expect
from pretrain.step_tables import StepTables, sequence_rope

__all__ = ["ATTENTION", "MODES", "ActionSteps", "ActionVideoTransformer", "ContextCache", "ModelOutput"]

# parameter names kept in float32 by ``model.to(low precision)`` (see the module docstring)
KEEP_FP32 = ("time_embed.", "time_modulation.", "modulation", "cross_norm.")


@dataclass(frozen=True)
class ModelOutput:
    action_velocity_BP32: Tensor | None  # [B, P, 32] predicted ε − x for the actions
    video_velocity_BCKHW: Tensor | None  # [B, C, K, H, W] predicted ε − x for the future latents


@dataclass(frozen=True)
class ContextCache:
    """What action-only decoding needs from the clean context, computed once per observation."""

    self_kv: tuple[KV, ...]  # per layer: K/V [B, heads, N_C, Dh] of the C tokens
    text_kv: tuple[KV, ...]  # per layer: the action stream's cross-attention K/V [B, heads, L, Dh] of text
    text_mask_B11L: Tensor | None
    embodiment_id_B: Tensor
    num_context: int  # N_C = (1 if state) + h·w


@dataclass(frozen=True)
class ActionSteps:
    """What every Euler step of one action chunk shares, computed once per chunk.

    ``rope`` of the P action tokens; time tables for the S steps' σ: ``temb_BSD`` [B, S, D] and
    ``mod_BS6D`` [B, S, 6, D] (step i is group i, computed as ``_time`` computes one group).
    """

    rope: Rope
    temb_BSD: Tensor
    mod_BS6D: Tensor

    def at(self, i: int) -> ActionSteps:
        """Step i alone (S = 1, views): one step's inputs, the same objects at every step."""
        return ActionSteps(self.rope, self.temb_BSD[:, i : i + 1], self.mod_BS6D[:, i : i + 1])


@dataclass(frozen=True)
class _Tokens:
    """One assembled sequence: tokens, runs of timestep groups, RoPE, attention segments."""

    x_BND: Tensor
    runs: Runs
    rope: Rope
    segments: tuple[int, ...]
    n_ctx: int
    n_act: int
    n_vid: int


def _hidden_only(block: nn.Module, *args: object, **kw: object) -> Tensor:
    """A block's hidden states without its K/V: what a checkpointed region may return."""
    return block(*args, **kw)[0]


class ActionVideoTransformer(nn.Module):
    block_class: type[Block] = Block  # the action-expert model runs its blocks in two halves

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, E, Hm, inner = cfg.dim, cfg.max_embodiments, cfg.mlp_hidden, cfg.mlp_inner_layers
        Da = cfg.action_expert_dim or D  # width of the state/action tokens' stream
        self.video_in = nn.Conv3d(cfg.latent_channels, D, kernel_size=cfg.patch, stride=cfg.patch)
        self.time_embed = TwoLayerMLP(cfg.freq_dim, D, nn.SiLU(), linear=FP32Linear)
        self.time_modulation = FP32Linear(D, 6 * D)
        self.text_in = TwoLayerMLP(cfg.text_dim, D, nn.GELU(approximate="tanh"))
        self.state_in = EmbodimentMLP(cfg.state_dim, Hm, Da, E, inner)
        self.action_in = EmbodimentMLP(cfg.action_dim, Hm, Da, E, inner)
        self.blocks = nn.ModuleList(
            self.block_class(D, cfg.heads, cfg.ffn_dim, cfg.eps, cfg.qk_norm, cfg.cross_attn_norm)
            for _ in range(cfg.layers)
        )
        self.video_out = OutputHead(D, cfg.eps, nn.Linear(D, cfg.patch_dim))
        self.action_out = OutputHead(Da, cfg.eps, EmbodimentMLP(Da, Hm, cfg.action_dim, E, inner))
        if cfg.video_residual:  # the zero head is "nothing moves": training starts at the repeat baseline
            nn.init.zeros_(self.video_out.proj.weight)
            nn.init.zeros_(self.video_out.proj.bias)
        self.activation_checkpointing = False

    # ------------------------------------------------------------ helpers

    @property
    def dtype(self) -> torch.dtype:
        return self.video_in.weight.dtype

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ActionVideoTransformer:
        """``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` leave the :data:`KEEP_FP32` tensors in
        float32 (device moves still apply to them)."""
        keep = set()
        for n, p in self.named_parameters():
            if any(k in n for k in KEEP_FP32) and p.dtype == torch.float32:
                keep.update({id(p)} | ({id(p.grad)} if p.grad is not None else set()))

        def guarded(t: Tensor) -> Tensor:
            out = fn(t)
            if id(t) in keep and isinstance(out, Tensor) and out.dtype != torch.float32:
                return t.detach().to(device=out.device)
            return out

        return super()._apply(guarded, recurse)

    def _time(self, sigma_BG: Tensor, owner: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """σ per group [B, G] → temb [B, G, D] and block modulation [B, G, 6, D].

        ``owner``: whose ``time_embed``/``time_modulation`` (default the backbone's; the action
        expert has its own, at its width).

        One small matmul per group rather than one over all B·G rows: a group's numbers then do
        not depend on how many other groups there are (bit-identical actions whatever V holds).
        """
        temb, mod = [], []
        for sigma_B in sigma_BG.unbind(1):
            feats = sinusoidal_embedding(sigma_B.float() * self.cfg.timestep_scale, self.cfg.freq_dim)
            t = (owner or self).time_embed(feats)  # FP32Linear layers: float32 whatever the weights' dtype
            temb.append(t)
            mod.append((owner or self).time_modulation(F.silu(t)).unflatten(-1, (6, -1)))
        return torch.stack(temb, dim=1), torch.stack(mod, dim=1)

    def _text(self, text_BLD: Tensor, text_mask_BL: Tensor | None) -> tuple[tuple[KV, ...], Tensor | None]:
        t = self.text_in(text_BLD.to(self.dtype))
        mask = None
        if text_mask_BL is not None:
            mask = text_mask_BL.bool()
            _check_values(mask.any(dim=1).all(), "text_mask_BL", "leaves a sample with no valid text token")
            mask = mask[:, None, None, :]
        return tuple(block.text_kv(t) for block in self.blocks), mask

    def _check_embodiment(self, embodiment_id_B: Tensor | None, B: int) -> Tensor:
        e = _expect("embodiment_id_B", embodiment_id_B, (B,))
        if e.dtype.is_floating_point or e.dtype == torch.bool:
            raise _err("embodiment_id_B", f"must be an integer tensor, got {e.dtype}")
        in_range = ((e >= 0) & (e < self.cfg.max_embodiments)).all()
        _check_values(in_range, "embodiment_id_B", f"must lie in [0, {self.cfg.max_embodiments})")
        return e

    def _context_tokens(
        self, obs_BC1HW: Tensor, state_B32: Tensor | None, embodiment_id_B: Tensor | None, rope: bool = True
    ) -> tuple[Tensor, Rope | None]:
        """C tokens [B, N_C, D] and their RoPE (the state is the 1D token after the P actions), or
        None with ``rope=False`` (the caller has it: :mod:`pretrain.step_tables`)."""
        cfg = self.cfg
        B, (H, W) = obs_BC1HW.shape[0], obs_BC1HW.shape[-2:]
        x = rearrange(self.video_in(obs_BC1HW.to(self.dtype)), "b d f h w -> b (f h w) d")
        has_state, (h, w) = state_B32 is not None, (H // cfg.patch[1], W // cfg.patch[2])
        table = sequence_rope(cfg, h, w, state=has_state, device=x.device) if rope else None
        if has_state:
            e = self._check_embodiment(embodiment_id_B, B)
            s = self.state_in(_expect("state_B32", state_B32, (B, cfg.state_dim)).to(self.dtype)[:, None], e)
            x = torch.cat([s, x], dim=1)
        return x, table

    def _action_rope(self, P: int, device: torch.device) -> Rope:
        """RoPE of P action tokens: 1D indices 1..P (see ``pretrain/layers.py``, RoPE)."""
        return rope_1d(1, P, self.cfg.head_dim, self.cfg.rope_theta, device)

    def _action_tokens(self, actions_BP32: Tensor, embodiment_id_B: Tensor) -> Tensor:
        """A tokens [B, P, D] (their RoPE: :meth:`_action_rope`, made once per chunk by the sampler)."""
        return self.action_in(actions_BP32.to(self.dtype), embodiment_id_B)

    def _run_blocks(
        self,
        tok: _Tokens,
        mod_BG6D: Tensor,
        text_kv: Sequence[KV],
        text_mask: Tensor | None,
        prefix: Sequence[KV] | None = None,
        key_mask_BM: Tensor | None = None,
        keep_kv: bool = False,
    ) -> tuple[Tensor, list[KV]]:
        """Hidden states after all blocks, and each layer's K/V when ``keep_kv`` (else ``[]``).

        Only ``encode_context`` keeps K/V. Holding them otherwise would keep every layer's keys
        and values alive until the forward ends, which under activation checkpointing is most
        of the memory the checkpointing was meant to free.
        """
        x, kvs = tok.x_BND, []
        for i, block in enumerate(self.blocks):
            args = (x, mod_BG6D, tok.runs, tok.rope, tok.segments, text_kv[i], text_mask)
            kw = {"prefix": prefix[i] if prefix is not None else None, "key_mask_BM": key_mask_BM}
            if self.activation_checkpointing and torch.is_grad_enabled() and not keep_kv:
                x = checkpoint(_hidden_only, block, *args, use_reentrant=False, **kw)
            else:
                x, kv = block(*args, **kw)
                if keep_kv:
                    kvs.append(kv)
        return x, kvs

    # ------------------------------------------------------------ forward

    def forward(
        self,
        obs_latent_BCFHW: Tensor,
        future_latent_BCKHW: Tensor | None = None,
        state_B32: Tensor | None = None,
        embodiment_id_B: Tensor | None = None,
        actions_BP32: Tensor | None = None,
        sigma_action_B: Tensor | None = None,
        sigma_video_B: Tensor | None = None,
        text_BLD: Tensor | None = None,
        text_mask_BL: Tensor | None = None,
        mode: str = "joint",
        *,
        actions_present_B: Tensor | None = None,
        attention: str = "block_causal",
        tables: StepTables | None = None,
    ) -> ModelOutput:
        """Velocities for the noisy token groups of ``mode`` (see the module docstring).

        obs_latent_BCFHW     [B, C, 1, H, W]  clean observation latent (F = 1)
        future_latent_BCKHW  [B, C, K, H, W]  noisy future latents (joint, pretrain, video)
        state_B32            [B, 32]          normalised padded state; None → no state token
        embodiment_id_B      [B] int          needed with state or actions
        actions_BP32         [B, P, 32]       noisy (joint, action) or clean (pretrain) actions
        sigma_action_B       [B]              noise level of the actions (joint, action)
        sigma_video_B        [B] or [B, K]    noise level of the future latents
        text_BLD             [B, L, text_dim] text-encoder states (required)
        text_mask_BL         [B, L] bool      True = valid text token; None = all valid
        actions_present_B    [B] bool         pretrain: False hides a sample's actions from V
        attention            "block_causal" | "full" (Wan-equivalent, for checking a backbone)
        tables               this step's RoPE and time tables, made once per chunk from the same σ
                             (``pretrain.step_tables.chunk_tables(...).at(i)``); None = built here
        """
        cfg = self.cfg
        plan = forward_plan(
            cfg,
            obs_latent_BCFHW,
            future_latent_BCKHW,
            actions_BP32,
            sigma_action_B,
            sigma_video_B,
            mode,
            actions_present_B,
            attention,
        )
        obs, fut, B, K, h, w = obs_latent_BCFHW, future_latent_BCKHW, plan.B, plan.K, plan.h, plan.w
        noisy_actions, has_actions, wants_video = plan.noisy_actions, plan.has_actions, plan.wants_video
        if tables is None:  # one step's tables, built here (the samplers pass them, made once per chunk)
            temb_BGD, mod_BG6D = self._time(plan.sigma_BG)
            rope = sequence_rope(
                cfg,
                h,
                w,
                state=state_B32 is not None,
                actions=has_actions,
                future_frames=K,
                device=obs.device,
            )
        else:
            temb_BGD, mod_BG6D, rope = tables.temb_BGD, tables.mod_BG6D, tables.rope
        if tuple(temb_BGD.shape[:2]) != tuple(plan.sigma_BG.shape):
            raise _err("tables", f"must hold [B, G] = {list(plan.sigma_BG.shape)} time tables of this step")

        # ---- tokens, runs (contiguous tokens sharing a group), RoPE positions
        ctx_BND, _ = self._context_tokens(obs, state_B32, embodiment_id_B, rope=False)
        parts = [ctx_BND]
        runs: list[tuple[int, int]] = [(ctx_BND.shape[1], 0)]
        n_act = 0
        if has_actions:
            e = self._check_embodiment(embodiment_id_B, B)
            acts = _expect("actions_BP32", actions_BP32, (B, cfg.chunk, cfg.action_dim))
            a_BND = self._action_tokens(acts, e)
            n_act = cfg.chunk
            parts.append(a_BND)
            runs.append((n_act, 1 if noisy_actions else 0))
        if wants_video:
            v_BND = rearrange(self.video_in(fut.to(self.dtype)), "b d k h w -> b (k h w) d")
            parts.append(v_BND)
            runs.extend(plan.vid_runs)
        n_ctx, n_vid = ctx_BND.shape[1], K * h * w
        N = n_ctx + n_act + n_vid
        if attention == "full":
            segments: tuple[int, ...] = (N,)
        else:
            segments = tuple(n for n in (n_ctx, n_act, n_vid) if n)
        if rope.cos_NP.shape[0] != N:
            raise _err("tables", f"must hold the RoPE of this step's {N} tokens, got {rope.cos_NP.shape[0]}")
        tok = _Tokens(torch.cat(parts, dim=1), tuple(runs), rope, segments, n_ctx, n_act, n_vid)

        key_mask = None
        if actions_present_B is not None:
            present = _expect("actions_present_B", actions_present_B, (B,)).bool()
            key_mask = torch.ones(B, N, dtype=torch.bool, device=obs.device)
            key_mask[:, n_ctx : n_ctx + n_act] = present[:, None]

        text_kv, text_mask = self._text(_expect("text_BLD", text_BLD, (B, None, cfg.text_dim)), text_mask_BL)
        x_BND, _ = self._run_blocks(tok, mod_BG6D, text_kv, text_mask, key_mask_BM=key_mask)

        # ---- heads
        action_v = video_v = None
        if noisy_actions:
            a = x_BND[:, n_ctx : n_ctx + n_act]
            action_v = self.action_out(a, temb_BGD, ((n_act, 1),), embodiment_id_B)
        if wants_video:
            video_v = self._video_velocity(x_BND[:, n_ctx + n_act :], temb_BGD, plan.vid_runs, K, h, w)
        return ModelOutput(action_velocity_BP32=action_v, video_velocity_BCKHW=video_v)

    def _video_velocity(self, v_BND: Tensor, temb_BGD: Tensor, runs: Runs, K: int, h: int, w: int) -> Tensor:
        """The future tokens through the video head, unpatchified to ``[B, C, K, H, W]``."""
        pt, ph, pw = self.cfg.patch
        out = self.video_out(v_BND, temb_BGD, runs)
        return rearrange(
            out, "b (k h w) (pt ph pw c) -> b c (k pt) (h ph) (w pw)", k=K, h=h, w=w, pt=pt, ph=ph, pw=pw
        )

    # ------------------------------------------------------------ action-only decoding

    def encode_context(
        self,
        obs_latent_BCFHW: Tensor,
        *,
        state_B32: Tensor | None = None,
        embodiment_id_B: Tensor,
        text_BLD: Tensor,
        text_mask_BL: Tensor | None = None,
    ) -> ContextCache:
        """Run the clean C tokens once; keep each layer's K/V for ``forward_actions``."""
        cfg = self.cfg
        obs = _expect("obs_latent_BCFHW", obs_latent_BCFHW, (None, cfg.latent_channels, 1, None, None))
        B = obs.shape[0]
        e = self._check_embodiment(embodiment_id_B, B)
        ctx_BND, ctx_rope = self._context_tokens(obs, state_B32, e)
        n_ctx = ctx_BND.shape[1]
        tok = _Tokens(ctx_BND, ((n_ctx, 0),), ctx_rope, (n_ctx,), n_ctx, 0, 0)
        _, mod_BG6D = self._time(torch.zeros(B, 1, device=obs.device))
        text_kv, text_mask = self._text(_expect("text_BLD", text_BLD, (B, None, cfg.text_dim)), text_mask_BL)
        _, kvs = self._run_blocks(tok, mod_BG6D, text_kv, text_mask, keep_kv=True)
        return ContextCache(tuple(kvs), text_kv, text_mask, e, n_ctx)

    def action_steps(self, cache: ContextCache, sigmas_BS: Tensor) -> ActionSteps:
        """RoPE of the action tokens and the time tables of all S Euler steps, for one chunk."""
        B = cache.embodiment_id_B.shape[0]
        temb_BSD, mod_BS6D = self._time(_expect("sigmas_BS", sigmas_BS, (B, None)).float())
        a_rope = self._action_rope(self.cfg.chunk, sigmas_BS.device)
        return ActionSteps(a_rope, temb_BSD, mod_BS6D)

    def forward_actions(
        self,
        cache: ContextCache,
        actions_BP32: Tensor,
        sigma_action_B: Tensor | None = None,
        *,
        steps: ActionSteps | None = None,
        step: int | None = None,
    ) -> Tensor:
        """Action velocity [B, P, 32] of noisy actions, attending to the cached context only.

        The noise level is ``sigma_action_B``, or step ``step`` of the precomputed ``steps``
        (:meth:`action_steps`); both give the same numbers, the second without recomputing
        the RoPE and time tables at every Euler step.
        """
        cfg = self.cfg
        B = cache.embodiment_id_B.shape[0]
        acts = _expect("actions_BP32", actions_BP32, (B, cfg.chunk, cfg.action_dim))
        if (sigma_action_B is None) == (steps is None) or (steps is None) != (step is None):
            raise ValueError("ActionVideoTransformer.forward_actions: give sigma_action_B, or steps and step")
        if steps is None:
            steps = self.action_steps(cache, _expect("sigma_action_B", sigma_action_B, (B,))[:, None])
            step = 0
        temb_BGD, mod_BG6D = steps.temb_BSD[:, step : step + 1], steps.mod_BS6D[:, step : step + 1]
        a_BND = self._action_tokens(acts, cache.embodiment_id_B)
        P = a_BND.shape[1]
        tok = _Tokens(
            x_BND=a_BND,
            runs=((P, 0),),
            rope=steps.rope,
            segments=(P,),
            n_ctx=0,
            n_act=P,
            n_vid=0,
        )
        x_BND, _ = self._run_blocks(tok, mod_BG6D, cache.text_kv, cache.text_mask_B11L, prefix=cache.self_kv)
        return self.action_out(x_BND, temb_BGD, ((P, 0),), cache.embodiment_id_B)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> ActionVideoTransformer:
    """Instantiate on ``device`` (``"meta"`` builds the module without allocating weights)."""
    with torch.device(device or "cpu"):
        return model_class(cfg)(cfg)


def model_class(cfg: ModelConfig) -> type[ActionVideoTransformer]:
    """The shared-backbone model, or the action-expert one (``pretrain/action_expert.py``)."""
    if cfg.has_action_expert:
        from pretrain.action_expert import MoTActionVideoTransformer

        return MoTActionVideoTransformer
    return ActionVideoTransformer


def param_count(cfg_or_model: ModelConfig | nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a config is instantiated on the meta device (nothing allocated)."""
    model = build_model(cfg_or_model, "meta") if isinstance(cfg_or_model, ModelConfig) else cfg_or_model
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
