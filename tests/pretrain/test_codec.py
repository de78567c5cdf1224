"""Latent codecs: exact pixel patches, a tiny random Wan VAE, the registry and the latent cache."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from pretrain.codec import LatentCache, PixelPatchCodec, WanVAECodec, list_codecs, make_codec
from tests.support.samples import tall_png, window_sample

# A Wan2.2-style VAE (residual blocks, patch_size 2) shrunk to a few thousand parameters:
# dims 8→8→16→16, two spatial downsamplings × patch 2 = factor 8, one temporal = factor 2.
TINY_WAN = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 8,
    "scale_factor_temporal": 2,
    "latents_mean": [0.1, -0.2, 0.3, -0.4],
    "latents_std": [0.5, 1.5, 2.0, 3.0],
}


def frames(b=2, f=3, h=16, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


# ---- pixel patches --------------------------------------------------------------------------


def test_pixel_codec_is_an_exact_inverse():
    codec = PixelPatchCodec(4)
    x = frames(b=2, f=5, h=16, w=24)
    z = codec.encode(x)
    assert codec.latent_channels == 48 and z.shape == (2, 48, 5, 4, 6)
    assert tuple(z.shape[1:]) == codec.latent_shape(5, 16, 24)
    assert torch.equal(codec.decode(z), x)  # bit-exact: a pure reshape
    # channel c·16 + p1·4 + p2 holds pixel (c, 4h + p1, 4w + p2)
    assert z[1, 2 * 16 + 1 * 4 + 3, 4, 2, 5] == x[1, 2, 4, 2 * 4 + 1, 5 * 4 + 3]


def test_pixel_codec_rejects_bad_shapes():
    codec = PixelPatchCodec(4)
    with pytest.raises(ValueError, match="18x16 is not divisible by the spatial factor 4"):
        codec.encode(frames(h=18))
    with pytest.raises(ValueError, match=r"expected latents \[B, 48"):
        codec.decode(torch.zeros(1, 12, 1, 2, 2))
    with pytest.raises(ValueError, match="positive int"):
        PixelPatchCodec(0)


def test_registry_did_you_mean():
    assert set(list_codecs()) >= {"pixel", "wan-vae"}
    assert make_codec("pixel", patch=2).latent_channels == 12
    with pytest.raises(KeyError, match="did you mean 'pixel'"):
        make_codec("pixle")
    with pytest.raises(KeyError, match="did you mean 'wan-vae'"):
        make_codec("wan_vae")


def test_cache_key_follows_config():
    assert PixelPatchCodec(4).cache_key() == PixelPatchCodec(4).cache_key()
    assert PixelPatchCodec(4).cache_key() != PixelPatchCodec(2).cache_key()
    assert PixelPatchCodec(4).cache_key().startswith("pixel-")


# ---- Wan VAE ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan() -> WanVAECodec:
    codec = make_codec("wan-vae", config=TINY_WAN, seed=0)
    assert isinstance(codec, WanVAECodec)
    return codec


def test_wan_codec_shapes_and_frame_by_frame_encoding(wan):
    assert (wan.latent_channels, wan.spatial_compression, wan.temporal_compression) == (4, 8, 1)
    assert wan.vae_temporal_compression == 2
    x = frames(b=2, f=3)
    z = wan.encode(x)
    assert z.shape == (2, 4, 3, 2, 2) and tuple(z.shape[1:]) == wan.latent_shape(3, 16, 16)
    # each frame is its own one-frame clip: encoding frame 2 alone gives the same latent
    alone = wan.encode(x[:, :, 2:3])
    torch.testing.assert_close(z[:, :, 2:3], alone, rtol=1e-5, atol=1e-5)
    y = wan.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_wan_codec_normalisation_matches_the_raw_vae(wan):
    x = frames(b=1, f=1, seed=3)
    raw = wan.vae.encode(x).latent_dist.mode()
    mean = torch.tensor(TINY_WAN["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY_WAN["latents_std"]).view(1, -1, 1, 1, 1)
    z = wan.encode(x)
    torch.testing.assert_close(z, (raw - mean) / std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wan.denormalize(wan.normalize(raw)), raw, rtol=1e-5, atol=1e-6)
    # decode inverts the normalisation before the VAE decoder
    torch.testing.assert_close(wan.decode(z), wan.vae.decode(raw).sample, rtol=1e-4, atol=1e-5)


def test_wan_codec_video_mode_follows_the_causal_layout():
    codec = make_codec("wan-vae", config=TINY_WAN, seed=0, frame_mode="video")
    assert codec.temporal_compression == 2 and codec.latent_shape(5, 16, 16) == (4, 3, 2, 2)
    x = frames(b=1, f=5)
    z = codec.encode(x)
    assert z.shape == (1, 4, 3, 2, 2)
    with pytest.raises(ValueError, match="frames - 1 must be divisible by 2"):
        codec.latent_shape(4, 16, 16)


def test_wan_codec_from_pretrained_folder(wan, tmp_path):
    wan.vae.save_pretrained(tmp_path / "pipe" / "vae")
    loaded = WanVAECodec.from_pretrained(tmp_path / "pipe")  # finds the vae/ subfolder
    x = frames(b=1, f=2, seed=5)
    torch.testing.assert_close(loaded.encode(x), wan.encode(x))
    direct = make_codec("wan-vae", path_or_repo=str(tmp_path / "pipe" / "vae"))
    torch.testing.assert_close(direct.encode(x), wan.encode(x))
    assert loaded.cache_key() != wan.cache_key()  # identified by source, not by weights hash


def test_wan_codec_offline_failure_is_clear(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"Hub repo id 'nobody/no-vae'.*local folder"):
        WanVAECodec.from_pretrained("nobody/no-vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        WanVAECodec.from_pretrained(tmp_path / "empty")


def test_wan_codec_rejects_bad_config():
    bad = {**TINY_WAN, "latents_std": [1.0, 1.0]}
    with pytest.raises(ValueError, match="latents_mean/std have 4/2 entries"):
        make_codec("wan-vae", config=bad)
    with pytest.raises(ValueError, match="scale_factor_spatial=16"):
        make_codec("wan-vae", config={**TINY_WAN, "scale_factor_spatial": 16})


# ---- latent cache ------------------------------------------------------------------------------


def write_shard(path, n=5, h=8, w=8, k=2):
    rng = np.random.default_rng(0)
    rows, pixels = [], {}
    for i in range(n):
        f = rng.integers(0, 256, (1 + k, h, w, 3), dtype=np.uint8)
        row = window_sample(
            "ep",
            i,
            action_Pd=np.zeros((2, 1)),
            state_d=np.zeros(1),
            num_future=k,
            source="t",
            video=tall_png(f),
            height=h,
            width=w,
        )
        pixels[row.sample_id] = f
        rows.append(row)
    pq.write_table(schemas.to_table(rows), path)
    return pixels


def test_latent_cache_encodes_once_and_reuses(tmp_path, monkeypatch):
    shard = tmp_path / "shard-00000.parquet"
    pixels = write_shard(shard)
    codec = PixelPatchCodec(4)
    cache = LatentCache(tmp_path / "cache", codec, batch_size=2)
    first = cache.get_or_encode(shard)
    assert cache.path_for(shard).is_file() and cache.path_for(shard).parent.name == codec.cache_key()
    sid = next(iter(pixels))
    x = torch.from_numpy(pixels[sid]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    torch.testing.assert_close(first.lookup([sid]), codec.encode(x))

    def boom(*a, **k):
        raise AssertionError("re-encoded a cached shard")

    monkeypatch.setattr(LatentCache, "encode_shard", boom)
    again = LatentCache(tmp_path / "cache", PixelPatchCodec(4)).get_or_encode(shard, list(pixels))
    assert again.sample_ids == first.sample_ids and torch.equal(again.latents_NCFhw, first.latents_NCFhw)
    # another codec config gets its own folder; unknown sample ids mean a stale entry
    assert LatentCache(tmp_path / "cache", PixelPatchCodec(2)).load(shard) is None
    assert cache.load(shard, ["not-there"]) is None
    with pytest.raises(KeyError, match="no latents for sample 'x'"):
        first.lookup(["x"])


def test_latent_cache_with_wan_vae(wan, tmp_path):
    shard = tmp_path / "shard-00000.parquet"
    write_shard(shard, n=3, h=16, w=16, k=1)
    got = LatentCache(tmp_path / "cache", wan).get_or_encode(shard)
    assert got.latents_NCFhw.shape == (3, 4, 2, 2, 2)
