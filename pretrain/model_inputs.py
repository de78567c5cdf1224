"""Argument checks of ``ActionVideoTransformer.forward``, shared by both model kinds.

``forward_plan`` validates a forward call's tensors against its mode (``pretrain/model.py``
lists the modes) and returns what both the shared-backbone model and the action-expert model
(``pretrain/action_expert.py``) build their token groups from: which groups are present, the
noise level of each timestep group ``[B, G]`` (0 = clean context, then the noisy actions, then
the video, one group per frame when σ_v is per frame) and the video's runs of tokens per group.

Value checks never force a host sync where it would cost (see ``check_values``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.config import ModelConfig

MODES = ("joint", "pretrain", "video", "action")
ATTENTION = ("block_causal", "full")


def err(name: str, why: str) -> ValueError:
    return ValueError(f"ActionVideoTransformer.forward: {name} {why}")


def check_values(ok: Tensor, name: str, why: str) -> None:
    """Raise if the bool tensor ``ok`` is False, without a host sync where one would cost.

    On CPU in eager mode ``bool()`` is free and gives a clear ValueError; elsewhere (CUDA, or
    being traced by ``torch.compile``) the check is queued on the device instead.
    """
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise err(name, why)
    else:
        torch._assert_async(ok, f"ActionVideoTransformer.forward: {name} {why}")


def expect(name: str, t: Tensor | None, shape: Sequence[int | None]) -> Tensor:
    """Check ``t`` has len(shape) dims and the given sizes (None = any)."""
    if t is None:
        raise err(name, "is required (in this mode)")
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape, strict=True)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise err(name, f"must have shape {want}, got {list(t.shape)}")
    return t


@dataclass(frozen=True)
class ForwardPlan:
    """The token groups of one checked forward call (h, w: the token grid of a frame)."""

    B: int
    h: int
    w: int
    K: int  # future latent frames (0 without video)
    wants_video: bool
    noisy_actions: bool
    has_actions: bool
    sigma_BG: Tensor  # [B, G] float32 noise level per timestep group
    vid_runs: tuple[tuple[int, int], ...]  # (tokens, group) runs of the future frames


def forward_plan(
    cfg: ModelConfig,
    obs_latent_BCFHW: Tensor,
    future_latent_BCKHW: Tensor | None,
    actions_BP32: Tensor | None,
    sigma_action_B: Tensor | None,
    sigma_video_B: Tensor | None,
    mode: str,
    actions_present_B: Tensor | None,
    attention: str,
) -> ForwardPlan:
    if mode not in MODES:
        raise err("mode", f"must be one of {MODES}, got {mode!r}")
    if attention not in ATTENTION:
        raise err("attention", f"must be one of {ATTENTION}, got {attention!r}")
    obs = expect("obs_latent_BCFHW", obs_latent_BCFHW, (None, cfg.latent_channels, 1, None, None))
    B, _, _, H, W = obs.shape
    if H % cfg.patch[1] or W % cfg.patch[2]:
        raise err("obs_latent_BCFHW", f"height/width {H}×{W} must be divisible by the patch {cfg.patch[1:]}")
    h, w = H // cfg.patch[1], W // cfg.patch[2]

    wants_video = mode in ("joint", "pretrain", "video")
    noisy_actions = mode in ("joint", "action")
    has_actions = noisy_actions or (mode == "pretrain" and actions_BP32 is not None)
    if not wants_video and future_latent_BCKHW is not None:
        raise err("future_latent_BCKHW", f"must be None in mode {mode!r}")
    if mode == "video" and actions_BP32 is not None:
        raise err("actions_BP32", "must be None in mode 'video'")
    if not noisy_actions and sigma_action_B is not None:
        raise err("sigma_action_B", f"must be None in mode {mode!r} (actions, if any, are clean)")
    if actions_present_B is not None and not (mode == "pretrain" and has_actions):
        raise err("actions_present_B", "is only meaningful in mode 'pretrain' with actions")

    # timestep groups: 0 = clean (C, and clean actions), 1 = noisy actions, then video
    sigmas = [torch.zeros(B, device=obs.device)]
    if noisy_actions:
        sigmas.append(expect("sigma_action_B", sigma_action_B, (B,)).float())
    K, vid_runs = 0, ()
    if wants_video:
        fut = expect("future_latent_BCKHW", future_latent_BCKHW, (B, cfg.latent_channels, None, H, W))
        K = fut.shape[2]
        if K < 1:
            raise err("future_latent_BCKHW", "needs at least one future frame")
        if sigma_video_B is None:
            raise err("sigma_video_B", "is required in this mode")
        first_v = 2 if noisy_actions else 1
        if sigma_video_B.ndim == 1:
            sigmas.append(expect("sigma_video_B", sigma_video_B, (B,)).float())
            vid_runs = ((K * h * w, first_v),)
        else:
            sigmas.extend(expect("sigma_video_B", sigma_video_B, (B, K)).float().unbind(1))
            vid_runs = tuple((h * w, first_v + k) for k in range(K))
    elif sigma_video_B is not None:
        raise err("sigma_video_B", f"must be None in mode {mode!r}")
    return ForwardPlan(
        B, h, w, K, wants_video, noisy_actions, has_actions, torch.stack(sigmas, dim=1), vid_runs
    )
