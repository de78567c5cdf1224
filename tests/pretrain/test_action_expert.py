"""The action expert (``pretrain/action_expert.py``): what the shared model tests cannot show.

``tests/pretrain/test_model.py`` and ``tests/policy/test_policy_inference.py`` run every mode,
mask and cache test on both model kinds; here: the config checks, that the visual stream *is*
the dense model (Wan loads into it, and without state/actions it computes what the dense model
computes), that action-only decoding runs the expert alone, and the presets' sizes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel

from pretrain.action_expert import MoTActionVideoTransformer
from pretrain.config import ModelConfig, get_model_config
from pretrain.model import ActionVideoTransformer, build_model, param_count
from pretrain.wan_adapter import NEW_MODULE_PREFIXES, load_wan_backbone, model_config_from_wan
from tests.pretrain.wan_tiny import WAN22_TRANSFORMER

MOT = dataclasses.replace(get_model_config("debug-mot"), text_dim=16)
B, H, W, K, L = 2, 4, 6, 2, 3


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"action_expert_dim": 32, "action_expert_ffn_dim": 0}, "must both be set"),
        ({"action_expert_dim": 0, "action_expert_ffn_dim": 64}, "must both be set"),
        ({"action_expert_dim": -8, "action_expert_ffn_dim": 64}, r"action_expert_dim must be an int ≥ 0"),
        ({"action_expert_dim": 32.0, "action_expert_ffn_dim": 64}, r"action_expert_dim must be an int ≥ 0"),
    ],
)
def test_config_checks_name_the_field(over, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(get_model_config("debug"), **over)
    # a config file gets an error naming the field too
    d = get_model_config("debug").to_dict() | over
    with pytest.raises(ValueError, match="action_expert_dim"):
        ModelConfig.from_dict(d)


def test_old_configs_and_the_dense_presets_are_unchanged():
    d = get_model_config("debug").to_dict()
    for k in ("action_expert_dim", "action_expert_ffn_dim"):
        assert d.pop(k) == 0
    assert ModelConfig.from_dict(d) == get_model_config("debug")  # a config saved before the expert loads
    assert type(build_model(get_model_config("debug"))) is ActionVideoTransformer
    assert isinstance(build_model(get_model_config("debug-mot")), MoTActionVideoTransformer)
    with pytest.raises(ValueError, match="has no action expert"):
        MoTActionVideoTransformer(get_model_config("debug"))


def test_visual_stream_has_the_dense_models_names_and_shapes():
    dense = build_model(dataclasses.replace(MOT, action_expert_dim=0, action_expert_ffn_dim=0), "meta")
    mot = build_model(MOT, "meta")
    d, m = dense.state_dict(), mot.state_dict()
    new = {k for k in m if k.startswith("action_expert.")}
    assert new and set(m) - new == set(d)
    for k, v in d.items():
        if not k.startswith(("state_in.", "action_in.", "action_out.")):  # the action stream's I/O is De wide
            assert m[k].shape == v.shape, k
    assert m["action_in.last_weight"].shape[-1] == MOT.action_expert_dim
    # the expert projects to the backbone's heads · head_dim and back to its own width
    assert m["action_expert.blocks.0.self_attn.q.weight"].shape == (MOT.dim, MOT.action_expert_dim)
    assert m["action_expert.blocks.0.self_attn.out.weight"].shape == (MOT.action_expert_dim, MOT.dim)


def test_wan_loads_into_the_visual_stream_and_video_matches_the_dense_model():
    tiny = {**WAN22_TRANSFORMER, "in_channels": 8, "out_channels": 8, "text_dim": 24, "ffn_dim": 40}
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**tiny).eval()
    with torch.no_grad():
        for p in wan.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    base = get_model_config("debug-mot")
    cfg = model_config_from_wan(dict(wan.config), base)
    assert cfg.action_expert_dim == base.action_expert_dim  # the expert's geometry comes from the preset
    mot = build_model(cfg).eval()
    report = load_wan_backbone(mot, wan.state_dict())
    assert report.unmapped == [] and any(k.startswith("action_expert.") for k in report.fresh)
    assert all(k.startswith(NEW_MODULE_PREFIXES) for k in report.fresh)
    dense = build_model(dataclasses.replace(cfg, action_expert_dim=0, action_expert_ffn_dim=0)).eval()
    load_wan_backbone(dense, wan.state_dict())

    g = torch.Generator().manual_seed(1)
    obs, fut = torch.randn(B, 8, 1, H, W, generator=g), torch.randn(B, 8, K, H, W, generator=g)
    kw = dict(future_latent_BCKHW=fut, sigma_video_B=torch.tensor([0.3, 0.8]), mode="video")
    kw["text_BLD"] = torch.randn(B, L, 24, generator=g)
    with torch.no_grad():
        want = dense(obs, **kw).video_velocity_BCKHW
        got = mot(obs, **kw).video_velocity_BCKHW
        # with a state token the expert takes part in the one attention, so the video moves
        with_state = mot(
            obs, **kw, state_B32=torch.randn(B, 32, generator=g), embodiment_id_B=torch.tensor([0, 1])
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (with_state.video_velocity_BCKHW - want).abs().max() > 1e-4


def test_action_only_decoding_runs_the_expert_alone():
    torch.manual_seed(0)
    model = build_model(MOT).eval()
    ran: list[str] = []
    for prefix, blocks in (("blocks", model.blocks), ("action_expert.blocks", model.action_expert.blocks)):
        for i, block in enumerate(blocks):
            for part in ("self_attn", "cross_attn", "ffn"):  # the layer code calls a block's parts
                getattr(block, part).register_forward_pre_hook(
                    lambda _m, _a, n=f"{prefix}.{i}": ran.append(n)
                )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        cache = model.encode_context(
            torch.randn(B, 48, 1, H, W, generator=g),
            state_B32=torch.randn(B, 32, generator=g),
            embodiment_id_B=torch.tensor([0, 3]),
            text_BLD=torch.randn(B, L, 16, generator=g),
        )
        ran.clear()
        v = model.forward_actions(cache, torch.randn(B, MOT.chunk, 32, generator=g), torch.tensor([0.5, 0.2]))
    assert v.shape == (B, MOT.chunk, 32)
    assert ran and set(ran) == {f"action_expert.blocks.{i}" for i in range(MOT.layers)}
    # the cache holds the joint-head K/V of the C tokens and the expert's text K/V
    assert cache.self_kv[0].k_BHMD.shape == (B, MOT.heads, 1 + (H // 2) * (W // 2), MOT.head_dim)
    assert cache.text_kv[0].k_BHMD.shape == (B, MOT.heads, L, MOT.head_dim)


def test_video_mode_without_state_has_an_empty_action_stream():
    torch.manual_seed(0)
    model = build_model(MOT).eval()
    g = torch.Generator().manual_seed(3)
    obs, fut = torch.randn(B, 48, 1, H, W, generator=g), torch.randn(B, 48, K, H, W, generator=g)
    with torch.no_grad():
        out = model(
            obs,
            fut,
            sigma_video_B=torch.rand(B, K, generator=g),
            text_BLD=torch.randn(B, L, 16),
            mode="video",
        )
    assert (
        out.video_velocity_BCKHW.shape == (B, 48, K, H, W) and torch.isfinite(out.video_velocity_BCKHW).all()
    )


def test_paper_size_preset_on_meta():
    dense, mot = get_model_config("wan22-5b"), get_model_config("wan22-5b-mot")
    assert (mot.action_expert_dim, mot.action_expert_ffn_dim) == (1024, 4096)
    n_expert = sum(
        p.numel() for k, p in build_model(mot, "meta").named_parameters() if k.startswith("action_expert.")
    )
    assert 0.9e9 < n_expert < 1.1e9
    assert param_count(mot) - n_expert < param_count(dense)  # narrower action encoders and head


def test_sliced_init_starts_the_expert_from_the_loaded_backbone():
    tiny = {**WAN22_TRANSFORMER, "in_channels": 8, "out_channels": 8, "text_dim": 24, "ffn_dim": 160}
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**tiny).eval()
    base = dataclasses.replace(get_model_config("debug-mot"), action_expert_init="sliced")
    cfg = model_config_from_wan(dict(wan.config), base)
    mot = build_model(cfg)
    report = load_wan_backbone(mot, wan.state_dict())
    assert not any(k.startswith("action_expert.") for k in report.fresh)
    sd, De, D = mot.state_dict(), cfg.action_expert_dim, cfg.dim
    assert torch.equal(
        sd["action_expert.blocks.1.self_attn.q.weight"], sd["blocks.1.self_attn.q.weight"][:, :De]
    )
    assert torch.equal(
        sd["action_expert.blocks.1.self_attn.out.weight"], sd["blocks.1.self_attn.out.weight"][:De]
    )
    assert torch.equal(sd["action_expert.blocks.0.modulation"], sd["blocks.0.modulation"][..., :De])
    # the 6·D time modulation is sliced per chunk: the expert's gate rows are the backbone's gate rows
    gate = slice(2 * D, 2 * D + De)
    want = sd["time_modulation.weight"][gate, :De]
    assert torch.equal(sd["action_expert.time_modulation.weight"][2 * De : 3 * De], want)
    with pytest.raises(ValueError, match="'fresh' or 'sliced'"):
        dataclasses.replace(base, action_expert_init="copied")


def test_a_checkpoint_of_the_other_kind_is_refused_by_name(tmp_path):
    import json

    from safetensors.torch import save_file

    from pipelines.pretrain import build_transformer

    dense = build_model(get_model_config("debug"))
    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": dense.cfg.to_dict()}))
    with pytest.raises(ValueError, match="action_expert_dim: checkpoint 0 vs model 32"):
        build_transformer(get_model_config("debug-mot"), str(tmp_path), codec="pixel")
    model, _ = build_transformer(get_model_config("debug"), str(tmp_path), codec="pixel")
    assert torch.equal(
        model.state_dict()["blocks.0.ffn.0.weight"], dense.state_dict()["blocks.0.ffn.0.weight"]
    )
