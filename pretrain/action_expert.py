"""The action expert: GWP-0.5's Mixture-of-Transformers on the action-centred video transformer.

Shape legend as ``pretrain/model.py``, plus: De action-expert width (``cfg.action_expert_dim``) ·
D backbone width = heads · Dh · Na / Nv tokens of the action / visual stream.

With ``ModelConfig.action_expert_dim`` > 0 the tokens form two *streams* with their own weights:

    action stream   [state token] + P action tokens          width De, ``action_expert.*``
    visual stream   h·w observation + K·h·w future tokens    width D,  the backbone (``blocks.*``)

Per layer each stream has its own block (``pretrain/layers.py`` ``Block``: norms, time
modulation, FFN, cross-attention to the text); the expert's projects its q/k/v to the
backbone's heads · Dh and its attention output back to De. **One** self-attention spans both
streams: the queries, keys and values of the two are put back in the dense model's token order
``[state, observation | actions | future]`` and run through the same block-causal attention
(C = state + observation, A = actions, V = future video; C sees C, A sees C + A, V sees all).
The semantics of every mode, of the mask and of ``actions_present_B`` are the dense model's.

The expert has its own time embedding and modulation (its temb is De wide, for its blocks and
the action head) and its own text projection (text_dim → De) for its cross-attention; state and
action encoders and the action head work at De. The visual stream keeps the names and shapes
of the dense model, so ``pretrain/wan_adapter.py`` loads Wan2.2 into it unchanged and the
expert starts fresh (``action_expert.`` is a new-module prefix there) or, with
``action_expert_init="sliced"``, from the leading slices of the loaded backbone's tensors
(:func:`slice_backbone_into_expert`, as GWP-0.5 slice-loads its expert).

**Action-only decoding.** ``encode_context`` runs the C tokens (state through the expert,
observation through the backbone) once and caches each layer's joint-head K/V and the
expert's text K/V; ``forward_actions`` then runs only the expert's blocks over the P action
tokens against that cache — per denoising step, the narrow stream alone. The API (and the
``ContextCache`` / ``ActionSteps`` it passes) is the dense model's, so the samplers work on
both kinds unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrain.config import ModelConfig
from pretrain.layers import (
    KV,
    Block,
    FP32Linear,
    Rope,
    Runs,
    TwoLayerMLP,
    block_causal_attention,
    rope_1d,
    rope_for_positions,
    video_positions,
)
from pretrain.model import ActionSteps, ActionVideoTransformer, ContextCache, ModelOutput
from pretrain.model_inputs import expect, forward_plan


class StreamBlock(Block):
    """A ``Block`` whose two halves around the self-attention are also run through ``__call__``
    (``part="in"`` / ``"out"``): module hooks then see them, as ZeRO-3's gathering of the
    block's own ``modulation`` needs."""

    def forward(self, *args: object, part: str | None = None, **kw: object) -> object:
        if part == "in":
            return self.attention_inputs(*args)
        if part == "out":
            return self.after_attention(*args)
        return super().forward(*args, **kw)


class ActionExpert(nn.Module):
    """The action stream's own weights: time embedding and modulation, text projection, blocks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        De = cfg.action_expert_dim
        self.time_embed = TwoLayerMLP(cfg.freq_dim, De, nn.SiLU(), linear=FP32Linear)
        self.time_modulation = FP32Linear(De, 6 * De)
        self.text_in = TwoLayerMLP(cfg.text_dim, De, nn.GELU(approximate="tanh"))
        self.blocks = nn.ModuleList(
            StreamBlock(
                De, cfg.heads, cfg.action_expert_ffn_dim, cfg.eps, cfg.qk_norm, cfg.cross_attn_norm, cfg.dim
            )
            for _ in range(cfg.layers)
        )


def slice_backbone_into_expert(model: MoTActionVideoTransformer) -> list[str]:
    """Start the expert from the backbone: each expert tensor takes the leading slice of the
    backbone tensor of the same name (``action_expert.blocks.3.ffn.0.weight`` ←
    ``blocks.3.ffn.0.weight`` [:F_e, :De]). Six-way modulation tables are sliced per chunk, so
    shift/scale/gate stay shift/scale/gate. Returns the names filled; the rest stay as they were.
    """
    own = dict(model.named_parameters())
    filled = []
    with torch.no_grad():
        for name, dst in model.action_expert.named_parameters():
            src = own.get(name)
            if src is None:
                continue
            if name == "time_modulation.weight" or name == "time_modulation.bias":  # [6·D, …] in six chunks
                src = src.unflatten(0, (6, -1))[:, : dst.shape[0] // 6].flatten(0, 1)
            if any(s < d for s, d in zip(src.shape, dst.shape, strict=True)):
                raise ValueError(
                    f"slice_backbone_into_expert: {name} {list(src.shape)} is narrower than {list(dst.shape)}"
                )
            dst.copy_(src[tuple(slice(0, d) for d in dst.shape)])
            filled.append("action_expert." + name)
    return filled


@dataclass(frozen=True)
class _Stream:
    """One stream's tokens and what its blocks need: modulation [B, G, 6, W], runs, RoPE."""

    x_BNW: Tensor
    mod_BG6W: Tensor
    runs: Runs
    rope: Rope
    text_kv: Sequence[KV]


@dataclass(frozen=True)
class _Layout:
    """Where the streams' tokens sit in the joint order [state, obs | actions | future]."""

    n_state: int  # 0 or 1: the first tokens of the action stream
    n_obs: int  # the first tokens of the visual stream
    segments: tuple[int, ...]  # block-causal segments of the joint order

    def join(self, a_BHND: Tensor, v_BHND: Tensor) -> Tensor:
        s, o = self.n_state, self.n_obs
        return torch.cat([a_BHND[:, :, :s], v_BHND[:, :, :o], a_BHND[:, :, s:], v_BHND[:, :, o:]], dim=2)

    def split(self, x_BHND: Tensor, n_a: int) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`join` for a joint tensor whose action stream has ``n_a`` tokens."""
        s, o = self.n_state, self.n_obs
        state, obs, act, vid = x_BHND.split([s, o, n_a - s, x_BHND.shape[2] - o - n_a], dim=2)
        return torch.cat([state, act], dim=2), torch.cat([obs, vid], dim=2)


def _layer(
    a_block: StreamBlock,
    v_block: StreamBlock,
    xa: Tensor,
    xv: Tensor,
    a: _Stream,
    v: _Stream,
    i: int,
    layout: _Layout,
    text_mask: Tensor | None,
    key_mask_BM: Tensor | None,
) -> tuple[Tensor, Tensor, KV]:
    """One MoT layer: each stream's block around one joint block-causal self-attention."""
    qv, kvv, mv = v_block(xv, v.mod_BG6W, v.runs, v.rope, part="in")
    if xa.shape[1]:
        qa, kva, ma = a_block(xa, a.mod_BG6W, a.runs, a.rope, part="in")
    else:  # no state and no actions (video mode without a state): an empty action stream
        qa, kva, ma = qv[:, :, :0], KV(qv[:, :, :0], qv[:, :, :0]), ()
    q = layout.join(qa, qv)
    kv = KV(layout.join(kva.k_BHMD, kvv.k_BHMD), layout.join(kva.v_BHMD, kvv.v_BHMD))
    o = block_causal_attention(q, kv.k_BHMD, kv.v_BHMD, layout.segments, 0, key_mask_BM)
    oa, ov = layout.split(o, xa.shape[1])
    if xa.shape[1]:
        xa = a_block(xa, oa, ma, a.runs, a.text_kv[i], text_mask, part="out")
    if xv.shape[1]:
        xv = v_block(xv, ov, mv, v.runs, v.text_kv[i], text_mask, part="out")
    return xa, xv, kv


def _layer_hidden(*args: object) -> tuple[Tensor, Tensor]:
    """A layer's hidden states without its K/V: what a checkpointed region may return."""
    xa, xv, _ = _layer(*args)  # type: ignore[arg-type]
    return xa, xv


class MoTActionVideoTransformer(ActionVideoTransformer):
    """The action-centred video transformer with an action expert (see the module docstring)."""

    block_class = StreamBlock

    def __init__(self, cfg: ModelConfig) -> None:
        if not cfg.has_action_expert:
            raise ValueError(f"MoTActionVideoTransformer: model config {cfg.name!r} has no action expert")
        super().__init__(cfg)
        self.action_expert = ActionExpert(cfg)

    # ------------------------------------------------------------ streams

    def _expert_text(self, text_BLD: Tensor) -> tuple[KV, ...]:
        t = self.action_expert.text_in(text_BLD.to(self.dtype))
        return tuple(block.text_kv(t) for block in self.action_expert.blocks)

    def _observation(self, obs_BC1HW: Tensor) -> tuple[Tensor, Rope]:
        cfg = self.cfg
        h, w = obs_BC1HW.shape[-2] // cfg.patch[1], obs_BC1HW.shape[-1] // cfg.patch[2]
        x = rearrange(self.video_in(obs_BC1HW.to(self.dtype)), "b d f h w -> b (f h w) d")
        return x, rope_for_positions(video_positions([0], h, w, x.device), cfg.rope_split, cfg.rope_theta)

    def _state(self, state_B32: Tensor | None, e: Tensor | None, B: int) -> tuple[list[Tensor], list[Rope]]:
        """The state token [B, 1, De] and its RoPE (1D index P + 1), or nothing without a state."""
        cfg = self.cfg
        if state_B32 is None:
            return [], []
        e = self._check_embodiment(e, B)
        s = self.state_in(expect("state_B32", state_B32, (B, cfg.state_dim)).to(self.dtype)[:, None], e)
        return [s], [rope_1d(cfg.chunk + 1, 1, cfg.head_dim, cfg.rope_theta, s.device)]

    def _run_layers(
        self,
        a: _Stream,
        v: _Stream,
        layout: _Layout,
        text_mask: Tensor | None,
        key_mask_BM: Tensor | None = None,
        keep_kv: bool = False,
    ) -> tuple[Tensor, Tensor, list[KV]]:
        """Both streams through every layer; each layer's joint K/V when ``keep_kv`` (else ``[]``),
        for the same reason as the dense ``_run_blocks``."""
        xa, xv, kvs = a.x_BNW, v.x_BNW, []
        pairs = zip(self.action_expert.blocks, self.blocks, strict=True)
        for i, (a_block, v_block) in enumerate(pairs):
            args = (a_block, v_block, xa, xv, a, v, i, layout, text_mask, key_mask_BM)
            if self.activation_checkpointing and torch.is_grad_enabled() and not keep_kv:
                xa, xv = checkpoint(_layer_hidden, *args, use_reentrant=False)
            else:
                xa, xv, kv = _layer(*args)
                if keep_kv:
                    kvs.append(kv)
        return xa, xv, kvs

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
    ) -> ModelOutput:
        """As ``ActionVideoTransformer.forward`` (same arguments, modes and outputs)."""
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
        B, K, h, w = plan.B, plan.K, plan.h, plan.w
        temb_v, mod_v = self._time(plan.sigma_BG)
        temb_a, mod_a = self._time(plan.sigma_BG, self.action_expert)

        # ---- action stream: [state] + actions; visual stream: observation + future frames
        a_parts, a_ropes = self._state(state_B32, embodiment_id_B, B)
        n_state = len(a_parts)
        a_runs: list[tuple[int, int]] = [(1, 0)] if n_state else []
        n_act = 0
        e = None
        if plan.has_actions:
            e = self._check_embodiment(embodiment_id_B, B)
            acts = expect("actions_BP32", actions_BP32, (B, cfg.chunk, cfg.action_dim))
            a_parts.append(self._action_tokens(acts, e))
            a_ropes.append(self._action_rope(cfg.chunk, acts.device))
            n_act = cfg.chunk
            a_runs.append((n_act, 1 if plan.noisy_actions else 0))
        obs_BND, obs_rope = self._observation(obs_latent_BCFHW)
        v_parts, v_ropes = [obs_BND], [obs_rope]
        if plan.wants_video:
            v_parts.append(
                rearrange(self.video_in(future_latent_BCKHW.to(self.dtype)), "b d k h w -> b (k h w) d")
            )
            v_pos = video_positions(range(1, K + 1), h, w, obs_BND.device)
            v_ropes.append(rope_for_positions(v_pos, cfg.rope_split, cfg.rope_theta))
        n_obs, n_vid = obs_BND.shape[1], K * h * w
        n_ctx, N = n_state + n_obs, n_state + n_obs + n_act + n_vid
        segments = (N,) if attention == "full" else tuple(n for n in (n_ctx, n_act, n_vid) if n)
        layout = _Layout(n_state, n_obs, segments)

        key_mask = None
        if actions_present_B is not None:
            present = expect("actions_present_B", actions_present_B, (B,)).bool()
            key_mask = torch.ones(B, N, dtype=torch.bool, device=obs_BND.device)
            key_mask[:, n_ctx : n_ctx + n_act] = present[:, None]

        text = expect("text_BLD", text_BLD, (B, None, cfg.text_dim))
        text_v, text_mask = self._text(text, text_mask_BL)
        xa_empty = obs_BND.new_zeros(B, 0, cfg.action_expert_dim)
        a = _Stream(
            torch.cat(a_parts, dim=1) if a_parts else xa_empty,
            mod_a,
            tuple(a_runs),
            Rope.cat(a_ropes) if a_ropes else obs_rope[:0],
            self._expert_text(text),
        )
        v = _Stream(torch.cat(v_parts, dim=1), mod_v, ((n_obs, 0), *plan.vid_runs), Rope.cat(v_ropes), text_v)
        xa, xv, _ = self._run_layers(a, v, layout, text_mask, key_mask)

        # ---- heads
        action_v = video_v = None
        if plan.noisy_actions:
            action_v = self.action_out(xa[:, n_state:], temb_a, ((n_act, 1),), e)
        if plan.wants_video:
            video_v = self._video_velocity(xv[:, n_obs:], temb_v, plan.vid_runs, K, h, w)
        return ModelOutput(action_velocity_BP32=action_v, video_velocity_BCKHW=video_v)

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
        """Run the C tokens of both streams once; keep each layer's joint K/V and the expert's text K/V."""
        cfg = self.cfg
        obs = expect("obs_latent_BCFHW", obs_latent_BCFHW, (None, cfg.latent_channels, 1, None, None))
        B = obs.shape[0]
        e = self._check_embodiment(embodiment_id_B, B)
        s_parts, s_ropes = self._state(state_B32, e, B)
        obs_BND, obs_rope = self._observation(obs)
        n_state, n_obs = len(s_parts), obs_BND.shape[1]
        zeros = torch.zeros(B, 1, device=obs.device)
        text = expect("text_BLD", text_BLD, (B, None, cfg.text_dim))
        text_v, text_mask = self._text(text, text_mask_BL)
        text_a = self._expert_text(text)
        a = _Stream(
            s_parts[0] if s_parts else obs_BND.new_zeros(B, 0, cfg.action_expert_dim),
            self._time(zeros, self.action_expert)[1],
            ((1, 0),) if n_state else (),
            s_ropes[0] if s_ropes else obs_rope[:0],
            text_a,
        )
        v = _Stream(obs_BND, self._time(zeros)[1], ((n_obs, 0),), obs_rope, text_v)
        layout = _Layout(n_state, n_obs, (n_state + n_obs,))
        _, _, kvs = self._run_layers(a, v, layout, text_mask, keep_kv=True)
        return ContextCache(tuple(kvs), text_a, text_mask, e, n_state + n_obs)

    def action_steps(self, cache: ContextCache, sigmas_BS: Tensor) -> ActionSteps:
        """RoPE of the action tokens and the expert's time tables of all S Euler steps."""
        B = cache.embodiment_id_B.shape[0]
        temb_BSD, mod_BS6D = self._time(expect("sigmas_BS", sigmas_BS, (B, None)).float(), self.action_expert)
        return ActionSteps(self._action_rope(self.cfg.chunk, sigmas_BS.device), temb_BSD, mod_BS6D)

    def forward_actions(
        self,
        cache: ContextCache,
        actions_BP32: Tensor,
        sigma_action_B: Tensor | None = None,
        *,
        steps: ActionSteps | None = None,
        step: int | None = None,
    ) -> Tensor:
        """Action velocity [B, P, 32]: only the expert's blocks run, against the cached context."""
        cfg = self.cfg
        B = cache.embodiment_id_B.shape[0]
        acts = expect("actions_BP32", actions_BP32, (B, cfg.chunk, cfg.action_dim))
        if (sigma_action_B is None) == (steps is None) or (steps is None) != (step is None):
            raise ValueError("ActionVideoTransformer.forward_actions: give sigma_action_B, or steps and step")
        if steps is None:
            steps = self.action_steps(cache, expect("sigma_action_B", sigma_action_B, (B,))[:, None])
            step = 0
        temb_BGD, mod_BG6D = steps.temb_BSD[:, step : step + 1], steps.mod_BS6D[:, step : step + 1]
        x = self._action_tokens(acts, cache.embodiment_id_B)
        P = x.shape[1]
        for i, block in enumerate(self.action_expert.blocks):
            x, _ = block(
                x,
                mod_BG6D,
                ((P, 0),),
                steps.rope,
                (P,),
                cache.text_kv[i],
                cache.text_mask_B11L,
                cache.self_kv[i],
            )
        return self.action_out(x, temb_BGD, ((P, 0),), cache.embodiment_id_B)
