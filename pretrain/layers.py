"""Building blocks of the action-centred video transformer (``pretrain/model.py``).

Shape legend (suffixes on tensor names):
    B batch · N query tokens · M key tokens · L text tokens · D model width · Hd heads ·
    Dh head dim · G timestep groups · E embodiments · I/O/Hm MLP in/out/hidden widths

Design, in the order a block runs (Wan2.x DiT, so that a Wan checkpoint maps one to one):

* **Modulation per token group.** Every token carries its own timestep (context tokens 0), as
  Wan2.2-TI2V's expanded timesteps. Tokens of one group (context, actions, each future frame)
  share a timestep and lie in one contiguous run, so the 6·D modulation is computed per
  *group* ``[B, G, 6, D]`` and applied run by run; this equals Wan's per-token computation
  without materialising six ``[B, N, D]`` tensors per block.
* **Self-attention** with q/k RMSNorm over all heads (Wan "rms_norm_across_heads") and RoPE
  applied after the norm. **Block-causal**: the sequence is a list of segments (C, A, V);
  queries of segment i attend to a cached prefix plus segments 0..i. Each segment is one
  plain ``scaled_dot_product_attention`` call without a mask (flash kernels stay usable), and
  nothing of a later segment enters an earlier one's arithmetic: changing V tokens leaves A
  outputs bit-identical. One segment covering everything is Wan's full attention.
* **Cross-attention** to the text states (q/k RMSNorm, no RoPE, optional padding mask) after an
  affine LayerNorm; no modulation, as in Wan.
* **FFN** with tanh-GELU, modulated and gated like self-attention.
* Norms and modulation run in float32 and cast back (Wan keeps them fp32 under bf16).

RoPE: the head dim is split as Wan does, (Dh − 2h, h, h) with h = 2·⌊Dh/6⌋, rotated by a video
token's (frame, row, column), so video tokens see exactly Wan's table. A 1D token (actions,
state) is rotated by its index i with one 1D table over the whole head dim (frequencies
θ^(−2j/Dh), j < Dh/2), as GigaWorld-Policy's action RoPE does. It does not sit on the video
grid: the old choice, position (i, i, i) in the video table, gave action i exactly the rotation
of the future-frame token at frame i, row i, column i. With the 1D table no index i ≥ 1 gives a
video token's rotation (the first pair of each axis turns at rate 1 in the video table but at
θ^(−d_f/Dh) ≠ 1 in the 1D one), so 1D indices start at 1: index 0 is the identity, which is
the video token (0, 0, 0). Pairs are interleaved (dims 2j, 2j+1), Wan's convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# (length, group) runs of contiguous tokens sharing one timestep group.
Runs = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------- timesteps


def sinusoidal_embedding(t_N: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[N] timesteps → [N, dim] float32 features, cos half first (Wan/diffusers order)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half
    )
    args_NH = t_N.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args_NH), torch.sin(args_NH)], dim=-1)


class FP32Linear(nn.Linear):
    """A linear layer computed in float32 whatever its weights' dtype (bf16 under DeepSpeed), for
    the time embedding and modulation; called as a module so ZeRO-3 gathers its weights."""

    def forward(self, x: Tensor) -> Tensor:
        b = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.weight.float(), b)


class TwoLayerMLP(nn.Module):
    """fc1 → activation → fc2 (Wan's time and text embedders)."""

    def __init__(self, in_dim: int, dim: int, act: nn.Module, linear: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.fc1 = linear(in_dim, dim)
        self.act = act
        self.fc2 = linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ---------------------------------------------------------------- RoPE


@dataclass(frozen=True)
class Rope:
    """cos/sin of the rotation angles for N tokens, [N, Dh/2] float32 each."""

    cos_NP: Tensor
    sin_NP: Tensor

    def __getitem__(self, s: slice) -> Rope:
        return Rope(self.cos_NP[s], self.sin_NP[s])

    @staticmethod
    def cat(ropes: Sequence[Rope]) -> Rope:
        return Rope(torch.cat([r.cos_NP for r in ropes]), torch.cat([r.sin_NP for r in ropes]))


def rope_for_positions(pos_N3: Tensor, split: tuple[int, int, int], theta: float) -> Rope:
    """Angles for (frame, row, column) positions [N, 3] with the head dim split as ``split``."""
    dtype = torch.float32 if pos_N3.device.type == "mps" else torch.float64
    pos_N3 = pos_N3.to(dtype)
    parts = []
    for axis, d in enumerate(split):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=dtype, device=pos_N3.device) / d)
        parts.append(pos_N3[:, axis, None] * freqs[None])
    angles_NP = torch.cat(parts, dim=-1)
    return Rope(angles_NP.cos().float(), angles_NP.sin().float())


def video_positions(frames: Sequence[int], height: int, width: int, device: torch.device) -> Tensor:
    """[len(frames)·height·width, 3] positions, frame-major then row-major (Wan token order)."""
    f = torch.tensor(list(frames), dtype=torch.float64, device=device)
    h = torch.arange(height, dtype=torch.float64, device=device)
    w = torch.arange(width, dtype=torch.float64, device=device)
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def rope_1d(start: int, length: int, head_dim: int, theta: float, device: torch.device) -> Rope:
    """Angles for 1D tokens i = start..start+length−1, one table over the whole head dim."""
    if start < 1:  # index 0 is the identity rotation, the video token (0, 0, 0)'s
        raise ValueError(f"rope_1d: 1D token indices start at 1, got {start}")
    dtype = torch.float32 if device.type == "mps" else torch.float64
    i_N = torch.arange(start, start + length, dtype=dtype, device=device)
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim)
    angles_NP = i_N[:, None] * freqs[None]
    return Rope(angles_NP.cos().float(), angles_NP.sin().float())


def apply_rope(x_BHND: Tensor, rope: Rope) -> Tensor:
    x = x_BHND.float().unflatten(-1, (-1, 2))
    x1, x2 = x[..., 0], x[..., 1]
    cos, sin = rope.cos_NP, rope.sin_NP
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x_BHND)


# ---------------------------------------------------------------- norms and modulation


def layer_norm_fp32(
    x_BND: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x_BND.float(), (x_BND.shape[-1],), w, b, eps)


def per_run(x_BND: Tensor, runs: Runs, fn: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Apply ``fn(piece, group)`` to each run of tokens and put the pieces back together."""
    if len(runs) == 1:
        return fn(x_BND, runs[0][1])
    pieces = x_BND.split([n for n, _ in runs], dim=1)
    return torch.cat([fn(p, g) for p, (_, g) in zip(pieces, runs, strict=True)], dim=1)


def modulate(x_BND: Tensor, shift_BGD: Tensor, scale_BGD: Tensor, runs: Runs, eps: float) -> Tensor:
    """LayerNorm (no affine) · (1 + scale) + shift with per-group shift/scale, in float32."""

    def fn(p: Tensor, g: int) -> Tensor:
        return layer_norm_fp32(p, eps) * (1 + scale_BGD[:, g, None]) + shift_BGD[:, g, None]

    return per_run(x_BND, runs, fn).type_as(x_BND)


def gated_residual(x_BND: Tensor, y_BND: Tensor, gate_BGD: Tensor, runs: Runs) -> Tensor:
    """x + y · gate, per group, in float32."""
    gy = per_run(y_BND.float(), runs, lambda p, g: p * gate_BGD[:, g, None])
    return (x_BND.float() + gy).type_as(x_BND)


# ---------------------------------------------------------------- attention


@dataclass(frozen=True)
class KV:
    """Keys and values [B, Hd, M, Dh] of one layer (after q/k norm and RoPE)."""

    k_BHMD: Tensor
    v_BHMD: Tensor


def block_causal_attention(
    q_BHND: Tensor,
    k_BHMD: Tensor,
    v_BHMD: Tensor,
    segments: Sequence[int],
    prefix: int = 0,
    key_mask_BM: Tensor | None = None,
) -> Tensor:
    """Segment i of the queries attends to keys [0, prefix + end of segment i).

    The keys are ``prefix`` cached tokens followed by the queries' own tokens. ``key_mask_BM``
    (True = visible) hides keys per sample.
    """
    outs, start = [], 0
    for n in segments:
        end = start + n
        visible = prefix + end
        mask = None
        if key_mask_BM is not None:
            mask = key_mask_BM[:, None, None, :visible]
        outs.append(
            F.scaled_dot_product_attention(
                q_BHND[:, :, start:end], k_BHMD[:, :, :visible], v_BHMD[:, :, :visible], attn_mask=mask
            )
        )
        start = end
    if start != q_BHND.shape[2]:
        raise ValueError(f"segments {tuple(segments)} cover {start} of {q_BHND.shape[2]} query tokens")
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class Attention(nn.Module):
    """Multi-head attention with Wan's q/k RMSNorm across heads; self (RoPE) or cross.

    ``inner`` (default ``dim``) is heads · head dim: the action expert projects its narrower
    tokens to the backbone's heads so that one attention spans both streams.
    """

    def __init__(self, dim: int, heads: int, eps: float, qk_norm: bool, inner: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        inner = inner or dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)
        self.q_norm = nn.RMSNorm(inner, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(inner, eps=eps) if qk_norm else nn.Identity()

    def _heads(self, x_BND: Tensor) -> Tensor:
        return rearrange(x_BND, "b n (h d) -> b h n d", h=self.heads)

    def queries(self, x_BND: Tensor, rope: Rope | None) -> Tensor:
        q = self._heads(self.q_norm(self.q(x_BND)))
        return apply_rope(q, rope) if rope is not None else q

    def keys_values(self, x_BMD: Tensor, rope: Rope | None) -> KV:
        k = self._heads(self.k_norm(self.k(x_BMD)))
        if rope is not None:
            k = apply_rope(k, rope)
        return KV(k, self._heads(self.v(x_BMD)))

    def project_out(self, o_BHND: Tensor) -> Tensor:
        return self.out(rearrange(o_BHND, "b h n d -> b n (h d)"))


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, cast back (called as a module so ZeRO-3 gathers it)."""

    def forward(self, x_BND: Tensor) -> Tensor:
        return layer_norm_fp32(x_BND, self.eps, self.weight, self.bias).type_as(x_BND)


class OutputHead(nn.Module):
    """Wan's output head: LayerNorm (no affine) modulated by (table + temb) per group → ``proj``."""

    def __init__(self, dim: int, eps: float, proj: nn.Module) -> None:
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)  # shift, scale
        self.proj = proj

    def forward(self, x_BND: Tensor, temb_BGD: Tensor, runs: Runs, *proj_args: Tensor) -> Tensor:
        sm = self.modulation[None].float() + temb_BGD[:, :, None].float()  # [B, G, 2, D]
        shift, scale = sm[:, :, 0], sm[:, :, 1]
        h = modulate(x_BND, shift, scale, runs, self.eps)
        return self.proj(h, *proj_args)


class Block(nn.Module):
    """One Wan-style transformer block over the token segments (see module docstring)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        eps: float,
        qk_norm: bool,
        cross_attn_norm: bool,
        attn_dim: int | None = None,
    ):
        super().__init__()
        self.eps = eps
        self.self_attn = Attention(dim, heads, eps, qk_norm, attn_dim)
        self.cross_norm = FP32LayerNorm(dim, eps=eps) if cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(dim, heads, eps, qk_norm, attn_dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        # shift, scale, gate (self-attention); shift, scale, gate (FFN) — added to the time modulation
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def text_kv(self, text_BLD: Tensor) -> KV:
        return self.cross_attn.keys_values(text_BLD, None)

    def forward(
        self,
        x_BND: Tensor,
        mod_BG6D: Tensor,
        runs: Runs,
        rope: Rope,
        segments: Sequence[int],
        text: KV,
        text_mask_B11L: Tensor | None,
        prefix: KV | None = None,
        key_mask_BM: Tensor | None = None,
    ) -> tuple[Tensor, KV]:
        """Returns the new hidden states and this layer's self-attention K/V of ``x_BND``."""
        q, kv, m = self.attention_inputs(x_BND, mod_BG6D, runs, rope)
        k, v = kv.k_BHMD, kv.v_BHMD
        n_prefix = 0
        if prefix is not None:
            k = torch.cat([prefix.k_BHMD, k], dim=2)
            v = torch.cat([prefix.v_BHMD, v], dim=2)
            n_prefix = prefix.k_BHMD.shape[2]
        o = block_causal_attention(q, k, v, segments, n_prefix, key_mask_BM)
        return self.after_attention(x_BND, o, m, runs, text, text_mask_B11L), kv

    # The two halves of a block around its self-attention, so that the action expert
    # (``pretrain/action_expert.py``) can run one attention over two streams' blocks.

    def attention_inputs(
        self, x_BND: Tensor, mod_BG6D: Tensor, runs: Runs, rope: Rope
    ) -> tuple[Tensor, KV, tuple[Tensor, ...]]:
        """Queries, K/V of the modulated tokens, and the six modulation tables [B, G, D]."""
        m = (self.modulation[None].float() + mod_BG6D.float()).unbind(dim=2)
        h = modulate(x_BND, m[0], m[1], runs, self.eps)
        return self.self_attn.queries(h, rope), self.self_attn.keys_values(h, rope), m

    def after_attention(
        self,
        x_BND: Tensor,
        o_BHND: Tensor,
        m: tuple[Tensor, ...],
        runs: Runs,
        text: KV,
        text_mask_B11L: Tensor | None,
    ) -> Tensor:
        """Gated residual of the attention output ``o_BHND``, cross-attention to text, FFN."""
        _, _, gate1, shift3, scale3, gate3 = m
        x_BND = gated_residual(x_BND, self.self_attn.project_out(o_BHND), gate1, runs)

        # cross-attention to text (no modulation)
        q = self.cross_attn.queries(self.cross_norm(x_BND), None)
        o = F.scaled_dot_product_attention(q, text.k_BHMD, text.v_BHMD, attn_mask=text_mask_B11L)
        x_BND = x_BND + self.cross_attn.project_out(o)

        # feed-forward
        h = modulate(x_BND, shift3, scale3, runs, self.eps)
        return gated_residual(x_BND, self.ffn(h), gate3, runs)


# ---------------------------------------------------------------- embodiment MLPs


class EmbodimentMLP(nn.Module):
    """MLP whose first and last linear layers are per embodiment; inner layers are shared.

    Weights ``[E, in, out]`` are gathered per sample by embodiment id, so one batch can mix
    robots. Inputs are padded vectors (32 dims); each embodiment learns which dims it uses.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_embodiments: int, inner_layers: int):
        super().__init__()
        self.num_embodiments = num_embodiments
        self.first_weight = nn.Parameter(torch.empty(num_embodiments, in_dim, hidden))
        self.first_bias = nn.Parameter(torch.empty(num_embodiments, hidden))
        self.inner = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(inner_layers))
        self.last_weight = nn.Parameter(torch.empty(num_embodiments, hidden, out_dim))
        self.last_bias = nn.Parameter(torch.empty(num_embodiments, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(−1/√fan_in, 1/√fan_in) for weight and bias
        for w, b in ((self.first_weight, self.first_bias), (self.last_weight, self.last_bias)):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x_BTI: Tensor, embodiment_id_B: Tensor) -> Tensor:
        e = embodiment_id_B.long()
        h = torch.einsum("bti,bih->bth", x_BTI, self.first_weight[e]) + self.first_bias[e][:, None]
        h = F.silu(h)
        for layer in self.inner:
            h = F.silu(layer(h))
        return torch.einsum("bth,bho->bto", h, self.last_weight[e]) + self.last_bias[e][:, None]
