"""Action and state tokens get RoPE rotations no video token has (issue #17, finding 7).

The old layout rotated action i as the video position (i, i, i): exactly the rotation of the
future-frame token at frame i, row i, column i. Here every 1D token's rotation is compared with
every video token's of a sequence whose grid contains the diagonal."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import get_model_config
from pretrain.layers import Rope, rope_1d, rope_for_positions, video_positions
from pretrain.model import build_model


def _rotations(rope: Rope) -> torch.Tensor:
    return torch.cat([rope.cos_NP, rope.sin_NP], dim=1).double()  # [N, Dh]


def _collisions(a: Rope, b: Rope) -> int:
    dist = torch.cdist(_rotations(a), _rotations(b))  # [Na, Nb]
    return int((dist < 1e-6).sum())


def test_action_and_state_rotations_do_not_collide_with_video():
    cfg = get_model_config("debug")
    model = build_model(cfg).eval()
    K, H, W = 4, 12, 12  # latent grid 6×6 tokens: the diagonal (i, i, i) exists for i ≤ 4
    obs = torch.zeros(1, cfg.latent_channels, 1, H, W)
    state = torch.zeros(1, cfg.state_dim)
    e = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        _, ctx_rope = model._context_tokens(obs, state, e)
        act_rope = model._action_rope(cfg.chunk, torch.device("cpu"))
    video = rope_for_positions(video_positions(range(K + 1), H // 2, W // 2, obs.device), cfg.rope_split, 1e4)
    state_rope = ctx_rope[slice(0, 1)]
    assert _collisions(act_rope, video) == 0
    assert _collisions(state_rope, video) == 0
    assert _collisions(state_rope, act_rope) == 0
    assert _collisions(act_rope, act_rope) == cfg.chunk  # each action only with itself
    # the old layout, for contrast: action i at (i, i, i) is the video token (i, i, i)
    diag = torch.arange(1, cfg.chunk + 1, dtype=torch.float64)[:, None].expand(-1, 3)
    assert _collisions(rope_for_positions(diag, cfg.rope_split, 1e4), video) == K


def test_rope_1d_keeps_relative_offsets_and_refuses_index_zero():
    r = rope_1d(1, 8, 16, 1e4, torch.device("cpu"))
    assert r.cos_NP.shape == (8, 8)
    # a true 1D RoPE: angle(i) − angle(j) depends on i − j only
    ang = torch.atan2(r.sin_NP.double(), r.cos_NP.double())
    d1 = torch.remainder(ang[3] - ang[1], 2 * torch.pi)
    d2 = torch.remainder(ang[7] - ang[5], 2 * torch.pi)
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="start at 1"):  # index 0 is the identity, video (0, 0, 0)'s
        rope_1d(0, 4, 16, 1e4, torch.device("cpu"))
