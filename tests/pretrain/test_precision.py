"""The transformer under bf16, activation checkpointing, torch.compile and the action sampler's
per-chunk tables (issue #17, findings 5 and 7), and the per-sample action loss."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import weakref

import pytest
import torch

from policy.inference import Context, sample_actions
from pretrain import model as model_module
from pretrain import step_tables as tables_module
from pretrain.config import get_model_config
from pretrain.flow import masked_mse, sigma_schedule
from pretrain.model import KEEP_FP32, ActionVideoTransformer, build_model

CFG = dataclasses.replace(get_model_config("debug"), text_dim=16, chunk=4, layers=3)
B, C, H, W, K = 2, CFG.latent_channels, 4, 4, 2


def inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        obs_latent_BCFHW=torch.randn(B, C, 1, H, W, generator=g),
        future_latent_BCKHW=torch.randn(B, C, K, H, W, generator=g),
        state_B32=torch.randn(B, 32, generator=g),
        embodiment_id_B=torch.tensor([1, 3]),
        actions_BP32=torch.randn(B, CFG.chunk, 32, generator=g),
        sigma_action_B=torch.tensor([0.3, 0.9]),
        sigma_video_B=torch.tensor([0.6, 0.2]),
        text_BLD=torch.randn(B, 3, CFG.text_dim, generator=g),
        text_mask_BL=torch.tensor([[True, True, False], [True, False, False]]),
    )


@pytest.fixture(scope="module")
def model() -> ActionVideoTransformer:
    torch.manual_seed(0)
    return build_model(CFG).eval()


def _kept(name: str) -> bool:
    return any(k in name for k in KEEP_FP32)


# ---------------------------------------------------------------- bf16


def test_to_bfloat16_keeps_time_embedding_modulation_and_norms_in_fp32(model):
    m = copy.deepcopy(model).to(torch.bfloat16)
    dtypes = {n: p.dtype for n, p in m.named_parameters()}
    kept = {n for n in dtypes if _kept(n)}
    # the fp32-critical parts, as diffusers' _keep_in_fp32_modules for Wan
    for want in (
        "time_embed.fc1.weight",
        "time_modulation.weight",
        "blocks.0.modulation",
        "blocks.2.cross_norm.weight",
    ):
        assert want in kept
    assert {"video_out.modulation", "action_out.modulation"} <= kept
    assert all(dtypes[n] == torch.float32 for n in kept), {n: dtypes[n] for n in kept}
    assert all(dtypes[n] == torch.bfloat16 for n in set(dtypes) - kept)
    assert m.dtype == torch.bfloat16
    with torch.no_grad():
        out = m(**inputs(), mode="joint")
    assert out.action_velocity_BP32.dtype == torch.bfloat16
    assert torch.isfinite(out.action_velocity_BP32.float()).all()
    # .float() brings everything back; the kept tensors were never rounded
    back = m.float()
    for n, p in back.named_parameters():
        assert p.dtype == torch.float32
        if _kept(n):
            assert torch.equal(p, dict(model.named_parameters())[n])


def test_time_tables_are_float32_when_deepspeed_casts_every_parameter(model):
    """DeepSpeed bf16 sets ``p.data = p.data.to(bf16)`` on every parameter (bypassing ``.to``);
    the time embedding and modulation must still be computed in float32."""
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.data = p.data.to(torch.bfloat16)
    ref = copy.deepcopy(m).float()  # fp32 arithmetic on the same (rounded) weights
    sigma_BG = torch.tensor([[0.0, 0.37, 0.91], [0.0, 0.05, 0.5]])
    temb, mod = m._time(sigma_BG)
    assert temb.dtype == mod.dtype == torch.float32
    want_temb, want_mod = ref._time(sigma_BG)
    torch.testing.assert_close(temb, want_temb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mod, want_mod, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        out = m(**inputs(), mode="joint")
    assert torch.isfinite(out.video_velocity_BCKHW.float()).all()


# ---------------------------------------------------------------- activation checkpointing


def test_checkpointed_forward_does_not_keep_earlier_layers_kv_alive(model):
    m = copy.deepcopy(model).train()
    m.activation_checkpointing = True
    keys: list[weakref.ref] = []
    alive_at_last: list[int] = []

    for i, block in enumerate(m.blocks):
        original = block.self_attn.keys_values

        def recording(x, rope, _orig=original, _i=i):
            kv = _orig(x, rope)
            if torch.is_grad_enabled() and len(keys) < len(m.blocks):  # the forward, not the recompute
                keys.append(weakref.ref(kv.k_BHMD))
            return kv

        block.self_attn.keys_values = recording

    def count(_module, _args):
        if len(keys) == len(m.blocks) - 1:
            alive_at_last.append(sum(r() is not None for r in keys))

    m.blocks[-1].register_forward_pre_hook(count)
    out = m(**inputs(), mode="joint")
    assert len(keys) == len(m.blocks) and alive_at_last, "every layer's K recorded once"
    assert alive_at_last[0] == 0, f"{alive_at_last[0]} earlier layers' K still alive under checkpointing"
    (out.action_velocity_BP32.square().mean() + out.video_velocity_BCKHW.square().mean()).backward()
    assert all(p.grad is not None for p in m.blocks[0].parameters())


# ---------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_forward_traces_as_one_graph_without_host_syncs(model):
    """``bool()`` of a tensor in the forward is a host sync and a dynamo graph break."""
    torch._dynamo.reset()
    m = build_model(dataclasses.replace(CFG, layers=1)).eval()
    d = inputs()
    obs = d.pop("obs_latent_BCFHW")
    with torch.no_grad():
        explained = torch._dynamo.explain(m)(obs, **d, mode="joint")
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    # eager CPU still gives the clear errors
    with pytest.raises(ValueError, match=r"embodiment_id_B must lie in \[0, 16\)"):
        m(obs, **dict(d, embodiment_id_B=torch.tensor([0, 16])), mode="joint")


def test_value_checks_still_raise_in_eager_mode(model):
    d = inputs()
    with pytest.raises(ValueError, match="no valid text token"):
        model(
            **dict(d, text_mask_BL=torch.tensor([[True, False, False], [False, False, False]])), mode="joint"
        )
    with pytest.raises(ValueError, match=r"embodiment_id_B must lie in \[0, 16\)"):
        model(**dict(d, embodiment_id_B=torch.tensor([-1, 2])), mode="joint")


# ---------------------------------------------------------------- per-chunk tables


def test_sampler_computes_rope_and_time_tables_once_per_chunk(model, monkeypatch):
    d = inputs()
    ctx = Context(
        d["obs_latent_BCFHW"], d["state_B32"], d["embodiment_id_B"], d["text_BLD"], d["text_mask_BL"]
    )
    noise = torch.randn(B, CFG.chunk, 32, generator=torch.Generator().manual_seed(3))
    calls = {"rope": 0, "time": 0}
    real_rope, real_rope_1d = tables_module.rope_for_positions, tables_module.rope_1d
    real_time = ActionVideoTransformer._time

    def counted(fn):
        def wrapper(*a, **k):
            calls["rope"] += 1
            return fn(*a, **k)

        return wrapper

    def time(self, sigma_BG):
        calls["time"] += 1
        return real_time(self, sigma_BG)

    monkeypatch.setattr(tables_module, "rope_for_positions", counted(real_rope))
    monkeypatch.setattr(tables_module, "rope_1d", counted(real_rope_1d))
    monkeypatch.setattr(model_module, "rope_1d", counted(real_rope_1d))
    monkeypatch.setattr(ActionVideoTransformer, "_time", time)
    sample_actions(model, ctx, num_steps=3, action_noise_BP32=noise)
    per_chunk = dict(calls)
    calls.update(rope=0, time=0)
    got = sample_actions(model, ctx, num_steps=10, action_noise_BP32=noise)
    # tables for the context and for the chunk, however many Euler steps (not one per step)
    assert calls == per_chunk and calls["time"] == 2
    monkeypatch.undo()
    # the same numbers as the step-by-step cached path and as the uncached full forward
    cache = model.encode_context(
        d["obs_latent_BCFHW"],
        state_B32=d["state_B32"],
        embodiment_id_B=d["embodiment_id_B"],
        text_BLD=d["text_BLD"],
        text_mask_BL=d["text_mask_BL"],
    )
    x, sig = noise.clone(), sigma_schedule(10, 5.0)
    with torch.no_grad():
        for s, s_next in itertools.pairwise(sig):
            x = x + (s_next - s) * model.forward_actions(cache, x, s.expand(B))
    assert torch.equal(got, x)
    uncached = sample_actions(model, ctx, num_steps=10, action_noise_BP32=noise, use_cache=False)
    torch.testing.assert_close(got, uncached, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="give sigma_action_B, or steps and step"):
        model.forward_actions(
            cache, x, s.expand(B), steps=model.action_steps(cache, sig[:1].expand(B, 1)), step=0
        )


# ---------------------------------------------------------------- loss normalisation


def test_action_loss_weighs_every_robot_the_same_whatever_its_width():
    tgt = torch.zeros(2, 3, 32)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0, :14] = True  # a 14-dim robot
    mask[1, :4] = True  # a 4-dim robot
    wrong_14 = tgt.clone()
    wrong_14[0] += 1.0  # unit error on every dim of the 14-dim sample (padded ones ignored)
    wrong_4 = tgt.clone()
    wrong_4[1] += 1.0
    assert masked_mse(wrong_14, tgt, mask).item() == pytest.approx(0.5)
    assert masked_mse(wrong_4, tgt, mask).item() == pytest.approx(0.5)
    # a row without actions (video only) adds nothing and does not dilute the others
    mask3 = torch.cat([mask, torch.zeros(1, 32, dtype=torch.bool)])
    pred3 = torch.cat([wrong_4, torch.full((1, 3, 32), 7.0)])
    assert masked_mse(pred3, torch.zeros(3, 3, 32), mask3).item() == pytest.approx(0.5)
