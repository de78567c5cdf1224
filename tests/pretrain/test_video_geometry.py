"""GWP's video geometry (issue #17, finding 2): observation + K future frames as one clip.

``wan22-5b`` defaults to the clip geometry: at 384×320 the C/A/V groups hold 1 + 120, 48 and 120
tokens. With a tiny Wan2.2-shaped VAE (16× spatial, 4× temporal) the first latent frame of the
clip is exactly the observation encoded alone — the clean context inference sees — and the four
future frames become one noisy latent frame. The per-frame geometry stays for the pixel codec.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from policy.inference import Context, sample_joint
from policy.model import GWPPolicyModel, PolicyConfig, TextConfig
from pretrain.codec import make_model_codec
from pretrain.config import get_model_config
from tests.pretrain.wan_tiny import WAN22_VAE

B, P, H, W = 2, 8, 32, 32  # 32×32 pixels → 2×2 latents → one token per latent frame


def test_wan22_5b_default_is_gwp_clip_geometry():
    cfg = get_model_config("wan22-5b")
    assert cfg.video_geometry == "clip" and cfg.num_future == 4 and cfg.future_latent_frames == 1
    tokens = cfg.token_counts(320 // 16, 384 // 16)
    assert tokens == {"context": 121, "action": 48, "video": 120}
    assert sum(tokens.values()) == 289
    per_frame = replace(cfg, video_geometry="per_frame").token_counts(320 // 16, 384 // 16)
    assert per_frame["video"] == 480  # the old layout: every future frame its own latent frame
    with pytest.raises(ValueError, match="multiple of 4"):
        replace(cfg, num_future=3)


def _policy(geometry: str, codec: str = "wan-vae") -> GWPPolicyModel:
    mcfg = replace(get_model_config("debug"), chunk=P, text_dim=64, video_geometry=geometry)
    kw = {"config": WAN22_VAE, "seed": 0} if codec == "wan-vae" else {"patch": 4}
    return GWPPolicyModel(
        PolicyConfig(model=mcfg, codec=codec, codec_kwargs=kw, text=TextConfig(dim=16))
    ).eval()


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs_frames": torch.rand(B, 3, H, W, generator=g) * 2 - 1,
        "future_frames": torch.rand(B, 3, 4, H, W, generator=g) * 2 - 1,
        "action": torch.randn(B, P, 32, generator=g),
        "action_mask": torch.ones(B, 32, dtype=torch.bool),
        "state": torch.randn(B, 32, generator=g),
        "state_mask": torch.ones(B, 32, dtype=torch.bool),
        "embodiment_id": torch.zeros(B, dtype=torch.long),
        "text_states": torch.randn(B, 3, 16, generator=g),  # 3 instruction tokens of 16 dims
        "text_mask": torch.ones(B, 3, dtype=torch.bool),
    }


def test_clip_geometry_first_latent_frame_is_the_clean_context():
    torch.manual_seed(0)
    model = _policy("clip")
    assert model.codec.temporal_compression == 4
    batch = _batch()
    obs, fut = model.batch_latents(batch)
    assert obs.shape == (B, 48, 1, 2, 2) and fut.shape == (B, 48, 1, 2, 2)
    # latent frame 0 of the clip = the observation alone, what inference encodes from one camera frame
    alone = model.encode_frames(batch["obs_frames"][:, :, None])
    torch.testing.assert_close(obs, alone, rtol=0, atol=1e-5)
    # the future latent frame summarises the four future frames after the observation
    last_alone = model.encode_frames(batch["future_frames"][:, :, 3:])
    assert (fut - last_alone).abs().max() > 1e-3
    loss, parts = model.joint_loss(batch)
    assert torch.isfinite(loss) and parts["video_loss"] > 0
    # joint sampling produces one future latent frame; decoding after the observation gives 4 frames
    text_BLT, text_mask_BL = model.batch_text(batch, obs.device)
    ctx = Context(
        obs_latent_BC1hw=obs,
        state_B32=batch["state"],
        embodiment_id_B=batch["embodiment_id"],
        text_BLD=text_BLT,
        text_mask_BL=text_mask_BL,
    )
    a, v = sample_joint(model.transformer, ctx, num_steps=2, generator=torch.Generator().manual_seed(1))
    assert a.shape == (B, P, 32) and v.shape == (B, 48, 1, 2, 2)
    assert model.decode_future(obs, v).shape == (B, 3, 4, H, W)


def test_per_frame_geometry_encodes_every_frame_on_its_own():
    torch.manual_seed(0)
    pixel = _policy("per_frame", codec="pixel")
    obs, fut = pixel.batch_latents(_batch())
    assert obs.shape == (B, 48, 1, 8, 8) and fut.shape == (B, 48, 4, 8, 8)
    wan = _policy("per_frame")
    assert wan.codec.temporal_compression == 1
    batch = _batch()
    _, fut = wan.batch_latents(batch)
    assert fut.shape == (B, 48, 4, 2, 2)
    torch.testing.assert_close(
        fut[:, :, 3:], wan.encode_frames(batch["future_frames"][:, :, 3:]), rtol=0, atol=1e-5
    )


def test_clip_geometry_refuses_a_codec_without_temporal_compression():
    with pytest.raises(ValueError, match="use --codec wan-vae"):
        make_model_codec("pixel", {"patch": 4}, "clip")
    with pytest.raises(ValueError, match="does not fit the model's video geometry 'clip'"):
        make_model_codec("wan-vae", {"config": WAN22_VAE, "frame_mode": "independent"}, "clip")


def test_loader_takes_one_clip_latents_from_a_latent_cache():
    import numpy as np

    from pretrain.data import LoaderConfig, collate

    row = {
        "sample_id": "s",
        "episode_id": "e",
        "embodiment": "x",
        "instruction": "i",
        "caption": "",
        "embodiment_id": 0,
        "action": np.zeros(4 * 32, np.float32),
        "action_mask": np.ones(32, bool),
        "state": np.zeros(32, np.float32),
        "state_mask": np.ones(32, bool),
        "frame_indices": [0, 12, 24, 36, 48],
        "video_format": "mp4",
    }
    rows, where = [row, dict(row, sample_id="t")], ["a.parquet", "a.parquet"]
    clip = torch.randn(2, 48, 2, 2, 2)  # 1 + 4/4 latent frames for 5 sample frames
    out = collate(rows, where, LoaderConfig(batch_size=2), clip)
    assert torch.equal(out["obs_latents"], clip[:, :, :1]) and torch.equal(
        out["future_latents"], clip[:, :, 1:]
    )
    assert (
        collate(rows, where, LoaderConfig(batch_size=2), torch.randn(2, 48, 5, 2, 2))["future_latents"].shape[
            2
        ]
        == 4
    )
    with pytest.raises(ValueError, match=r"a\.parquet: latents have 4 frames for 5 sample frames"):
        collate(rows, where, LoaderConfig(batch_size=2), torch.randn(2, 48, 4, 2, 2))
