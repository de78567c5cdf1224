"""A random tiny diffusers WanTransformer3DModel and our transformer, loaded through the adapter,
give the same video prediction: Wan2.2-TI2V style (1 clean observation frame with timestep 0,
K noisy frames, per-token timesteps), with Wan's full attention and with our block-causal mask
imposed on the diffusers model through a masking attention processor."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from safetensors.torch import save_file

from pretrain.config import get_model_config
from pretrain.model import build_model, param_count
from pretrain.wan_adapter import (
    NEW_MODULE_PREFIXES,
    convert_wan_state_dict,
    load_wan_backbone,
    model_config_from_wan,
    read_wan_state_dict,
)
from tests.pretrain.wan_tiny import WAN22_TRANSFORMER

TINY = {**WAN22_TRANSFORMER, "in_channels": 8, "out_channels": 8, "text_dim": 24, "ffn_dim": 40}
B, K, H, W, L = 2, 3, 6, 8, 5


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():  # randomise everything, norms included, so a swapped mapping shows
        for p in wan.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    cfg = model_config_from_wan(dict(wan.config), get_model_config("debug"))
    ours = build_model(cfg).eval()
    report = load_wan_backbone(ours, wan.state_dict())
    assert report.unmapped == []
    assert report.fresh and all(k.startswith(NEW_MODULE_PREFIXES) for k in report.fresh)
    return wan, ours


def _inputs(sigma_video):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(B, 8, 1, H, W, generator=g)
    fut = torch.randn(B, 8, K, H, W, generator=g)
    text = torch.randn(B, L, 24, generator=g)
    hw = (H // 2) * (W // 2)
    # Wan2.2-TI2V expanded timesteps: 0 on the observation frame's tokens, σ·1000 on each future frame
    per_frame = sigma_video if sigma_video.ndim == 2 else sigma_video[:, None].expand(B, K)
    t_tokens = torch.cat([torch.zeros(B, 1), per_frame], dim=1).repeat_interleave(hw, dim=1) * 1000
    return obs, fut, text, t_tokens


@pytest.mark.parametrize(
    "sigma_video", [torch.tensor([0.3, 0.9]), torch.tensor([[0.2, 0.5, 0.7], [1.0, 0.4, 0.1]])]
)
def test_full_attention_matches_wan(pair, sigma_video):
    wan, ours = pair
    obs, fut, text, t_tokens = _inputs(sigma_video)
    with torch.no_grad():
        ref = wan(torch.cat([obs, fut], dim=2), t_tokens, text, return_dict=False)[0][:, :, 1:]
        got = ours(
            obs,
            future_latent_BCKHW=fut,
            sigma_video_B=sigma_video,
            text_BLD=text,
            mode="video",
            attention="full",
        )
    assert got.video_velocity_BCKHW.shape == ref.shape == (B, 8, K, H, W)
    assert ref.abs().mean() > 0.1  # a real signal, not a vanishing output
    torch.testing.assert_close(got.video_velocity_BCKHW, ref, atol=1e-4, rtol=1e-4)


class _MaskedProcessor(WanAttnProcessor):
    """Wan's processor with a fixed self-attention mask (diffusers' block passes None)."""

    def __init__(self, mask_NN):
        super().__init__()
        self.mask_NN = mask_NN

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, self.mask_NN, rotary_emb)


def test_block_causal_matches_masked_wan(pair):
    wan, ours = pair
    sigma_video = torch.tensor([0.6, 0.25])
    obs, fut, text, t_tokens = _inputs(sigma_video)
    hw, n = (H // 2) * (W // 2), (H // 2) * (W // 2) * (K + 1)
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[:hw, hw:] = False  # C (observation frame) sees only C; V sees C and V
    with torch.no_grad():
        full_ref = wan(torch.cat([obs, fut], dim=2), t_tokens, text, return_dict=False)[0][:, :, 1:]
        saved = [b.attn1.processor for b in wan.blocks]
        try:
            for b in wan.blocks:
                b.attn1.set_processor(_MaskedProcessor(mask))
            ref = wan(torch.cat([obs, fut], dim=2), t_tokens, text, return_dict=False)[0][:, :, 1:]
        finally:
            for b, p in zip(wan.blocks, saved, strict=True):
                b.attn1.set_processor(p)
        got = ours(obs, future_latent_BCKHW=fut, sigma_video_B=sigma_video, text_BLD=text, mode="video")
    assert (ref - full_ref).abs().max() > 1e-3  # the mask matters, so the comparison can fail
    torch.testing.assert_close(got.video_velocity_BCKHW, ref, atol=1e-4, rtol=1e-4)


def test_load_from_saved_folder_and_geometry_check(pair, tmp_path):
    wan, ours = pair
    wan.save_pretrained(
        tmp_path / "transformer"
    )  # a pipeline-style folder: transformer/config.json + weights
    sd = read_wan_state_dict(tmp_path)
    assert set(sd) == set(wan.state_dict())
    fresh = build_model(ours.cfg)
    fresh.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if k.startswith(NEW_MODULE_PREFIXES)}, strict=False
    )
    load_wan_backbone(fresh, tmp_path)
    for k, v in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    other = build_model(get_model_config("debug"))
    with pytest.raises(ValueError, match="does not match model config"):
        load_wan_backbone(other, tmp_path)


def test_sharded_file_and_bad_inputs(pair, tmp_path):
    wan, ours = pair
    sd = {k: v.contiguous() for k, v in wan.state_dict().items()}
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[::2]}, str(tmp_path / "a.safetensors"))
    save_file({k: sd[k] for k in keys[1::2]}, str(tmp_path / "b.safetensors"))
    assert set(read_wan_state_dict(tmp_path)) == set(sd)

    bogus = dict(sd, **{"condition_embedder.image_embedder.ff.net.0.proj.weight": torch.zeros(3, 3)})
    conv = convert_wan_state_dict(bogus, ours.cfg)
    assert conv.unmapped == ["condition_embedder.image_embedder.ff.net.0.proj.weight"] and conv.missing == []
    with pytest.raises(ValueError, match="unmapped checkpoint keys"):
        load_wan_backbone(build_model(ours.cfg), bogus)
    assert load_wan_backbone(build_model(ours.cfg), bogus, strict=False).unmapped == conv.unmapped

    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    assert any(m.startswith("blocks.1.") for m in convert_wan_state_dict(partial, ours.cfg).missing)

    wrong = dict(sd, **{"proj_out.weight": torch.zeros(5, 32)})
    with pytest.raises(ValueError, match=r"proj_out\.weight .* video_out\.proj\.weight"):
        convert_wan_state_dict(wrong, ours.cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.safetensors"):
        read_wan_state_dict(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_wan_state_dict(tmp_path / "absent.safetensors")


def test_fused_projections_convert_like_unfused(pair):
    wan, ours = pair
    sd = dict(wan.state_dict())
    for i in range(TINY["num_layers"]):
        p = f"blocks.{i}.attn1."
        for leaf in ("weight", "bias"):
            sd[f"{p}to_qkv.{leaf}"] = torch.cat([sd.pop(f"{p}to_{n}.{leaf}") for n in "qkv"])
        p = f"blocks.{i}.attn2."
        for leaf in ("weight", "bias"):
            sd[f"{p}to_kv.{leaf}"] = torch.cat([sd.pop(f"{p}to_{n}.{leaf}") for n in "kv"])
    conv = convert_wan_state_dict(sd, ours.cfg)
    ref = convert_wan_state_dict(wan.state_dict(), ours.cfg)
    assert conv.unmapped == [] and conv.missing == []
    assert set(conv.state_dict) == set(ref.state_dict)
    for k, v in ref.state_dict.items():
        assert torch.equal(conv.state_dict[k], v), k


def test_wan22_5b_geometry_maps_completely_on_meta():
    """The real Wan2.2-TI2V-5B geometry: every diffusers tensor maps, shapes agree, nothing allocated."""
    five_b = {
        **WAN22_TRANSFORMER,
        **dict(num_attention_heads=24, attention_head_dim=128, text_dim=4096, freq_dim=256),
        **dict(ffn_dim=14336, num_layers=30, rope_max_seq_len=1024),
    }
    with torch.device("meta"):
        wan = WanTransformer3DModel(**five_b)
    cfg = get_model_config("wan22-5b")
    assert model_config_from_wan(five_b, cfg).__dict__ | {"name": cfg.name} == cfg.__dict__
    conv = convert_wan_state_dict(wan.state_dict(), cfg)
    assert conv.unmapped == [] and conv.missing == []
    n_wan = sum(p.numel() for p in wan.parameters())
    ours = build_model(cfg, "meta")
    n_backbone = sum(p.numel() for k, p in ours.named_parameters() if not k.startswith(NEW_MODULE_PREFIXES))
    assert n_backbone == n_wan
    assert 4.9e9 < n_wan < 5.1e9 and param_count(cfg) > n_wan
