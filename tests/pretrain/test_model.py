"""ActionVideoTransformer: modes, block-causal property, context cache, embodiments, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pretrain.config import ModelConfig, get_model_config, list_model_configs, register_model_config
from pretrain.flow import FlowConfig, flow_loss, noise_batch
from pretrain.model import ActionVideoTransformer, build_model, param_count

CFG = dataclasses.replace(get_model_config("debug"), text_dim=16)
# the action-expert kind (pretrain/action_expert.py) must pass every test the shared backbone does
CFG_MOT = dataclasses.replace(get_model_config("debug-mot"), text_dim=16)
KINDS = pytest.mark.parametrize("cfg", [CFG, CFG_MOT], ids=["dense", "mot"])
B, C, K, H, W, P, L = 2, CFG.latent_channels, 3, 4, 6, CFG.chunk, 4


def batch(seed: int = 0, **over):
    g = torch.Generator().manual_seed(seed)
    d = dict(
        obs_latent_BCFHW=torch.randn(B, C, 1, H, W, generator=g),
        future_latent_BCKHW=torch.randn(B, C, K, H, W, generator=g),
        state_B32=torch.randn(B, 32, generator=g),
        embodiment_id_B=torch.tensor([1, 5]),
        actions_BP32=torch.randn(B, P, 32, generator=g),
        sigma_action_B=torch.tensor([0.3, 0.8]),
        sigma_video_B=torch.tensor([0.5, 0.2]),
        text_BLD=torch.randn(B, L, CFG.text_dim, generator=g),
    )
    d.update(over)
    return d


@pytest.fixture(scope="module", params=[CFG, CFG_MOT], ids=["dense", "mot"])
def model(request) -> ActionVideoTransformer:
    torch.manual_seed(0)
    return build_model(request.param).eval()


def call(model, **kw):
    obs = kw.pop("obs_latent_BCFHW")
    with torch.no_grad():
        return model(obs, **kw)


def test_modes_give_the_right_outputs(model):
    d = batch()
    out = call(model, **d, mode="joint")
    assert out.action_velocity_BP32.shape == (B, P, 32) and out.video_velocity_BCKHW.shape == (B, C, K, H, W)
    out = call(model, **dict(d, sigma_action_B=None), mode="pretrain")
    assert out.action_velocity_BP32 is None and out.video_velocity_BCKHW.shape == (B, C, K, H, W)
    out = call(model, **dict(d, sigma_action_B=None, actions_BP32=None), mode="pretrain")
    assert out.action_velocity_BP32 is None and out.video_velocity_BCKHW.shape == (B, C, K, H, W)
    out = call(model, **dict(d, sigma_action_B=None, actions_BP32=None), mode="video")
    assert out.video_velocity_BCKHW.shape == (B, C, K, H, W)
    out = call(model, **dict(d, future_latent_BCKHW=None, sigma_video_B=None), mode="action")
    assert out.action_velocity_BP32.shape == (B, P, 32) and out.video_velocity_BCKHW is None
    # per-frame video noise levels
    out = call(model, **dict(d, sigma_video_B=torch.rand(B, K)), mode="joint")
    assert torch.isfinite(out.video_velocity_BCKHW).all()
    # positional arguments in the documented order
    with torch.no_grad():
        pos = model(*[d[k] for k in list(d)[:7]], d["text_BLD"], None, "joint")
    torch.testing.assert_close(
        pos.action_velocity_BP32, call(model, **d).action_velocity_BP32, atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="text_BLD is required"):
        call(model, **dict(d, text_BLD=None))
    # no state token
    out = call(model, **dict(d, state_B32=None), mode="joint")
    assert torch.isfinite(out.action_velocity_BP32).all()


def test_future_video_cannot_influence_actions(model):
    """Block-causal mask: V changes leave action outputs bit-identical (fp32); actions do steer V."""
    d = batch()
    ref = call(model, **d, mode="joint")
    for change in (
        {"future_latent_BCKHW": torch.randn(B, C, K, H, W)},
        {"sigma_video_B": torch.tensor([0.95, 0.01])},
        {"sigma_video_B": torch.rand(B, K)},
    ):
        out = call(model, **dict(d, **change), mode="joint")
        assert torch.equal(out.action_velocity_BP32, ref.action_velocity_BP32)
    action_only = call(model, **dict(d, future_latent_BCKHW=None, sigma_video_B=None), mode="action")
    torch.testing.assert_close(action_only.action_velocity_BP32, ref.action_velocity_BP32, atol=1e-5, rtol=0)
    moved = call(model, **dict(d, actions_BP32=torch.randn(B, P, 32)), mode="joint")
    assert (moved.video_velocity_BCKHW - ref.video_velocity_BCKHW).abs().max() > 1e-4
    # full attention (Wan-equivalent) does let V reach the actions: the mask is what guarantees it
    full = call(
        model, **dict(d, future_latent_BCKHW=torch.randn(B, C, K, H, W)), mode="joint", attention="full"
    )
    assert not torch.equal(full.action_velocity_BP32, ref.action_velocity_BP32)


@pytest.mark.parametrize("with_state", [True, False])
def test_cached_action_decoding_matches_uncached(model, with_state):
    d = batch(3)
    if not with_state:
        d["state_B32"] = None
    ref = call(model, **d, mode="joint").action_velocity_BP32
    with torch.no_grad():
        cache = model.encode_context(
            d["obs_latent_BCFHW"],
            state_B32=d["state_B32"],
            embodiment_id_B=d["embodiment_id_B"],
            text_BLD=d["text_BLD"],
        )
        got = model.forward_actions(cache, d["actions_BP32"], d["sigma_action_B"])
        assert cache.num_context == (H // 2) * (W // 2) + int(with_state)
        assert len(cache.self_kv) == CFG.layers
        # the cache is reusable across denoising steps
        again = model.forward_actions(cache, d["actions_BP32"] * 0.5, torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    other = call(
        model, **dict(d, actions_BP32=d["actions_BP32"] * 0.5, sigma_action_B=torch.tensor([0.1, 0.1]))
    )
    torch.testing.assert_close(again, other.action_velocity_BP32, atol=1e-5, rtol=0)


def test_actions_present_hides_actions_per_sample(model):
    d = batch(4, sigma_action_B=None)
    mixed = call(model, **d, mode="pretrain", actions_present_B=torch.tensor([True, False]))
    with_a = call(model, **d, mode="pretrain")
    without = call(model, **dict(d, actions_BP32=None), mode="pretrain")
    v = mixed.video_velocity_BCKHW
    torch.testing.assert_close(v[0], with_a.video_velocity_BCKHW[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(v[1], without.video_velocity_BCKHW[1], atol=1e-5, rtol=0)
    assert (with_a.video_velocity_BCKHW[1] - without.video_velocity_BCKHW[1]).abs().max() > 1e-4


def test_embodiments_are_gathered_per_sample(model):
    d = batch(5)
    both = call(model, **d, mode="joint").action_velocity_BP32
    for i in range(B):
        one = {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in d.items()}
        torch.testing.assert_close(
            call(model, **one, mode="joint").action_velocity_BP32[0], both[i], atol=1e-5, rtol=0
        )
    swapped = call(model, **dict(d, embodiment_id_B=torch.tensor([5, 1])), mode="joint").action_velocity_BP32
    assert (swapped - both).abs().max() > 1e-4


def test_text_mask_hides_padding(model):
    d = batch(6)
    pad = torch.cat([d["text_BLD"], 100 * torch.randn(B, 3, CFG.text_dim)], dim=1)
    mask = torch.cat([torch.ones(B, L, dtype=torch.bool), torch.zeros(B, 3, dtype=torch.bool)], dim=1)
    ref = call(model, **d, mode="joint")
    got = call(model, **dict(d, text_BLD=pad, text_mask_BL=mask), mode="joint")
    torch.testing.assert_close(got.video_velocity_BCKHW, ref.video_velocity_BCKHW, atol=1e-5, rtol=0)
    unmasked = call(model, **dict(d, text_BLD=pad), mode="joint")
    assert (unmasked.video_velocity_BCKHW - ref.video_velocity_BCKHW).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no valid text token"):
        call(model, **dict(d, text_mask_BL=torch.zeros(B, L, dtype=torch.bool)), mode="joint")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"obs_latent_BCFHW": torch.zeros(B, C + 1, 1, H, W)},
            r"obs_latent_BCFHW must have shape \[\?, 48, 1",
        ),
        ({"obs_latent_BCFHW": torch.zeros(B, C, 1, 5, W)}, "divisible by the patch"),
        ({"actions_BP32": torch.zeros(B, P - 1, 32)}, "actions_BP32 must have shape"),
        ({"embodiment_id_B": torch.tensor([0, CFG.max_embodiments])}, r"must lie in \[0, 16\)"),
        ({"embodiment_id_B": torch.tensor([0.0, 1.0])}, "integer tensor"),
        ({"sigma_action_B": None}, "sigma_action_B is required"),
        ({"future_latent_BCKHW": torch.zeros(B, C, K, H + 2, W)}, "future_latent_BCKHW must have shape"),
        ({"mode": "both"}, "mode must be one of"),
        ({"text_BLD": torch.zeros(B, L, 7)}, "text_BLD must have shape"),
    ],
)
def test_bad_inputs_get_clear_errors(model, change, match):
    d = dict(batch(), mode="joint")
    d.update(change)
    with pytest.raises(ValueError, match=match):
        call(model, **d)


def test_mode_argument_combinations_are_checked(model):
    d = batch()
    with pytest.raises(ValueError, match="must be None in mode 'action'"):
        call(model, **d, mode="action")
    with pytest.raises(ValueError, match="sigma_action_B must be None"):
        call(model, **d, mode="pretrain")
    with pytest.raises(ValueError, match="actions_BP32 must be None in mode 'video'"):
        call(model, **dict(d, sigma_action_B=None), mode="video")


@KINDS
def test_gradients_reach_every_parameter_and_checkpointing_agrees(cfg):
    torch.manual_seed(1)
    m = build_model(cfg)
    d = batch(7)
    obs = d.pop("obs_latent_BCFHW")

    def grads():
        m.zero_grad()
        out = m(obs, **d, mode="joint")
        (out.action_velocity_BP32.square().mean() + out.video_velocity_BCKHW.square().mean()).backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    used = {k for k, g in plain.items() if g.abs().sum() > 0}
    embodiment_rows = {k for k, _ in m.named_parameters() if k.split(".")[-1].startswith(("first_", "last_"))}
    # every parameter gets a gradient (per-embodiment tables only in the rows of ids 1 and 5)
    assert used == {k for k, _ in m.named_parameters()}, set(dict(m.named_parameters())) - used
    for k in embodiment_rows:
        g = plain[k]
        assert g[[0, 2, 3]].abs().sum() == 0 and g[[1, 5]].abs().sum() > 0
    m.activation_checkpointing = True
    ckpt = grads()
    for k, g in plain.items():
        torch.testing.assert_close(ckpt[k], g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["debug", "debug-mot"])
def test_debug_training_steps_learn(preset):
    torch.manual_seed(2)
    m = build_model(get_model_config(preset))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    flow = FlowConfig()
    g = torch.Generator().manual_seed(0)
    obs, fut = torch.randn(4, 48, 1, 8, 8, generator=g), torch.randn(4, 48, 4, 8, 8, generator=g)
    acts = torch.randn(4, 48, 32, generator=g)
    mask = torch.zeros(4, 32, dtype=torch.bool)
    mask[:, :7] = True
    text, emb, state = (
        torch.randn(4, 1, 512, generator=g),
        torch.tensor([0, 1, 2, 3]),
        torch.randn(4, 32, generator=g),
    )
    losses = []
    for step in range(30):
        nb = noise_batch(flow, acts, fut, generator=torch.Generator().manual_seed(step % 3))
        out = m(
            obs,
            future_latent_BCKHW=nb.video_noisy_BCKHW,
            state_B32=state,
            embodiment_id_B=emb,
            actions_BP32=nb.actions_noisy_BP32,
            sigma_action_B=nb.sigma_action_B,
            sigma_video_B=nb.sigma_video_B,
            text_BLD=text,
        )
        loss = flow_loss(
            flow,
            out.action_velocity_BP32,
            nb.action_target_BP32,
            mask,
            out.video_velocity_BCKHW,
            nb.video_target_BCKHW,
        )
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.total.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


@KINDS
def test_bf16_forward_runs(cfg):
    m = build_model(cfg).to(torch.bfloat16).eval()
    out = call(m, **batch(), mode="joint")
    assert out.action_velocity_BP32.dtype == torch.bfloat16
    assert (
        torch.isfinite(out.action_velocity_BP32.float()).all()
        and torch.isfinite(out.video_velocity_BCKHW.float()).all()
    )


# ---------------------------------------------------------------- config and presets


def test_presets_and_did_you_mean():
    assert {"debug", "small", "wan22-5b"} <= set(list_model_configs())
    with pytest.raises(KeyError, match="did you mean 'wan22-5b'"):
        get_model_config("wan22_5b")
    with pytest.raises(KeyError, match="did you mean 'debug'"):
        get_model_config("debgu")
    with pytest.raises(ValueError, match="already registered"):
        register_model_config(get_model_config("debug"))
    with pytest.raises(ValueError, match="must equal heads·head_dim"):
        dataclasses.replace(get_model_config("debug"), dim=65)
    with pytest.raises(ValueError, match="frame patch must be 1"):
        dataclasses.replace(get_model_config("debug"), patch=(2, 2, 2))
    with pytest.raises(ValueError, match="video_residual must be a bool"):
        dataclasses.replace(get_model_config("debug"), video_residual=1)
    cpu_video = get_model_config("cpu-video")  # the CPU demo's video preset: residual video target
    assert cpu_video.video_residual and not get_model_config("debug").video_residual
    assert ModelConfig.from_dict(cpu_video.to_dict()) == cpu_video
    head = ActionVideoTransformer(cpu_video).video_out.proj  # starts at "nothing moves"
    assert not head.weight.any() and not head.bias.any()
    assert ActionVideoTransformer(get_model_config("debug")).video_out.proj.weight.any()
    cfg = get_model_config("small")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"ModelConfig\.depth: unknown field.*; allowed: \['name'"):
        ModelConfig.from_dict(dict(cfg.to_dict(), depth=3))


def test_wan22_5b_on_meta_is_about_5b():
    cfg = get_model_config("wan22-5b")
    assert (cfg.dim, cfg.layers, cfg.heads, cfg.head_dim, cfg.ffn_dim) == (3072, 30, 24, 128, 14336)
    assert (cfg.latent_channels, cfg.patch, cfg.text_dim, cfg.rope_split) == (
        48,
        (1, 2, 2),
        4096,
        (44, 42, 42),
    )
    m = build_model(cfg, "meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    n = param_count(m)
    assert 4.9e9 < n < 5.4e9, n
    assert param_count(cfg) == n
    assert param_count(get_model_config("debug")) < 1e6
