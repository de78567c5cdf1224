"""The codec follows the model's device and latents land there (issue #17, finding 4).

No accelerator is needed to see it: the meta device is a second device. Before the fix the Wan
VAE was a plain attribute that ``model.to()`` never moved, and latents came back on the VAE's
device (or, with the pixel codec, on the frames' device) rather than the model's.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from policy.model import GWPPolicyModel, PolicyConfig, TextConfig
from pretrain.codec import make_model_codec
from pretrain.config import get_model_config
from pretrain.objective import ObjectiveConfig, PretrainObjective
from tests.pretrain.wan_tiny import WAN22_VAE


def _policy(codec: str, kw: dict) -> GWPPolicyModel:
    mcfg = replace(get_model_config("debug"), chunk=4, text_dim=64)
    return GWPPolicyModel(PolicyConfig(model=mcfg, codec=codec, codec_kwargs=kw, text=TextConfig(dim=16)))


def test_policy_to_moves_the_wan_vae():
    model = _policy("wan-vae", {"config": WAN22_VAE, "seed": 0})
    assert {p.device.type for p in model.codec.vae.parameters()} == {"cpu"}
    model.to("meta")
    assert model.transformer.video_in.weight.device.type == "meta"
    assert {p.device.type for p in model.codec.vae.parameters()} == {"meta"}
    assert {b.device.type for b in model.codec.vae.buffers()} <= {"meta"}
    assert next(model.codec.vae.parameters()).dtype == torch.float32  # device only: the VAE keeps its dtype


def test_latents_land_on_the_models_device():
    model = _policy("pixel", {"patch": 4}).to("meta")
    frames_cpu = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    lat = model.encode_frames(frames_cpu)
    assert lat.device.type == "meta" and lat.shape == (1, 48, 1, 8, 8)


def test_wan_codec_returns_latents_on_the_frames_device():
    codec = make_model_codec("wan-vae", {"config": WAN22_VAE, "seed": 0}, "per_frame").to("meta")
    lat = codec.encode(torch.zeros(1, 3, 1, 32, 32, device="meta"))
    assert lat.device.type == "meta" and lat.shape == (1, 48, 1, 2, 2)


def test_pretrain_objective_moves_the_codec_to_the_batch():
    codec = make_model_codec("wan-vae", {"config": WAN22_VAE, "seed": 0}, "clip")
    objective = PretrainObjective(ObjectiveConfig(), codec, text_dim=64)
    batch = {
        "obs_frames": torch.zeros(1, 3, 32, 32, device="meta"),
        "future_frames": torch.zeros(1, 3, 4, 32, 32, device="meta"),
    }
    obs, fut = objective.latents(batch)
    assert {p.device.type for p in codec.vae.parameters()} == {"meta"}
    assert obs.device.type == fut.device.type == "meta"
    assert obs.shape == (1, 48, 1, 2, 2) and fut.shape == (1, 48, 1, 2, 2)
