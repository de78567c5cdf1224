"""What every Euler step of one chunk shares: the sequence's RoPE and the step grid's time tables.

Shape legend: B batch · S Euler steps · G timestep groups · N tokens · D model width.

A forward pass of :class:`pretrain.model.ActionVideoTransformer` needs, besides its tokens,

* the **RoPE** of its token sequence (:func:`sequence_rope`): it depends only on the geometry —
  a state token or not, the h×w token grid of a latent frame, whether the P action tokens are
  there, K future latent frames — so it is the same at every step of a chunk;
* the **time tables** of its timestep groups (σ → sinusoidal features → time MLP → ``temb``
  and the 6·D block modulation): they depend only on the σ of the step grid, which is fixed
  before the chunk starts.

Rebuilding both at every Euler step costs time and host work for nothing, and keeps a step from
being a fixed graph. The samplers (:mod:`policy.inference`) therefore build one
:class:`ChunkTables` per chunk with :func:`chunk_tables` — the RoPE once, the time tables of all
S steps — and hand its :class:`StepTables` ``at(i)`` to the forward of step i, which then builds
neither. The
numbers are those the forward computes itself: the same functions on the same inputs (the time
MLP runs per group as ``ActionVideoTransformer._time`` always does, so a group's values do not
depend on how many groups are computed together).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.config import ModelConfig
from pretrain.layers import Rope, rope_1d, rope_for_positions, video_positions


def sequence_rope(
    cfg: ModelConfig,
    h: int,
    w: int,
    *,
    state: bool,
    actions: bool = False,
    future_frames: int = 0,
    device: torch.device,
) -> Rope:
    """RoPE of the sequence [state] + h·w observation tokens [+ P actions] [+ K·h·w future tokens].

    The layout of ``pretrain/layers.py`` (RoPE): observation tokens at video frame 0, future
    frames at 1..K, actions at 1D indices 1..P and the state token at the 1D index P + 1.
    """
    parts = []
    if state:
        parts.append(rope_1d(cfg.chunk + 1, 1, cfg.head_dim, cfg.rope_theta, device))
    parts.append(rope_for_positions(video_positions([0], h, w, device), cfg.rope_split, cfg.rope_theta))
    if actions:
        parts.append(rope_1d(1, cfg.chunk, cfg.head_dim, cfg.rope_theta, device))
    if future_frames:
        v_pos = video_positions(range(1, future_frames + 1), h, w, device)
        parts.append(rope_for_positions(v_pos, cfg.rope_split, cfg.rope_theta))
    return parts[0] if len(parts) == 1 else Rope.cat(parts)


@dataclass(frozen=True)
class StepTables:
    """One step's RoPE of the N tokens and time tables of its G groups, as the forward builds them."""

    rope: Rope
    temb_BGD: Tensor  # [B, G, D]
    mod_BG6D: Tensor  # [B, G, 6, D]


@dataclass(frozen=True)
class ChunkTables:
    """The RoPE of a sequence and the time tables of its G groups at all S steps of one chunk."""

    rope: Rope
    temb_BSGD: Tensor  # [B, S, G, D]
    mod_BSG6D: Tensor  # [B, S, G, 6, D]

    @property
    def num_steps(self) -> int:
        return self.temb_BSGD.shape[1]

    def at(self, i: int) -> StepTables:
        """Step i's tables (views, nothing computed)."""
        return StepTables(self.rope, self.temb_BSGD[:, i], self.mod_BSG6D[:, i])


def chunk_tables(
    model: torch.nn.Module,
    sigmas_BSG: Tensor,
    latent_hw: tuple[int, int],
    *,
    state: bool,
    actions: bool,
    future_frames: int = 0,
) -> ChunkTables:
    """Tables of one chunk for ``model`` (an ``ActionVideoTransformer``).

    ``sigmas_BSG`` holds σ of every timestep group at every step, in the forward's group order:
    0 for the context, then σ_a of the noisy actions (if any), then σ_v of the future latents
    (one group, or one per future frame). ``latent_hw`` is the latent frame's (H, W).
    """
    if sigmas_BSG.ndim != 3:
        raise ValueError(f"step_tables: sigmas_BSG must have shape [B, S, G], got {list(sigmas_BSG.shape)}")
    cfg = model.cfg
    _, S, G = sigmas_BSG.shape
    temb, mod = model._time(sigmas_BSG.flatten(1).float())
    h, w = latent_hw[0] // cfg.patch[1], latent_hw[1] // cfg.patch[2]
    rope = sequence_rope(
        cfg, h, w, state=state, actions=actions, future_frames=future_frames, device=sigmas_BSG.device
    )
    return ChunkTables(rope, temb.unflatten(1, (S, G)), mod.unflatten(1, (S, G)))
