"""The joint and uncached action-only samplers build their RoPE and time tables once per chunk
(issue #17, finding 7; ``pretrain/step_tables.py``), with the numbers of building them at every
step, bit for bit.

The reference loops below are the samplers as they were: the full forward at every Euler step,
which builds every table itself.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from policy.inference import Context, sample_actions, sample_joint
from pretrain import model as model_module
from pretrain import step_tables as tables_module
from pretrain.config import get_model_config
from pretrain.flow import sigma_schedule, velocity_of_clean
from pretrain.model import ActionVideoTransformer, build_model
from pretrain.step_tables import chunk_tables

B, P, K, H, W = 2, 6, 2, 6, 4  # latent 6×4 → 3×2 tokens per frame
# the residual video head (zero-initialised) gets random weights so the video path is exercised
CFG = dataclasses.replace(get_model_config("cpu-video"), chunk=P, num_future=K, text_dim=16)


@pytest.fixture(scope="module")
def model() -> ActionVideoTransformer:
    torch.manual_seed(0)
    m = build_model(CFG).eval()
    with torch.no_grad():
        m.video_out.proj.weight.normal_(0, 0.05)
    return m


def context(seed: int = 0, state: bool = True) -> Context:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 32, dtype=torch.bool)
    mask[0, :4], mask[1, :14] = True, True
    return Context(
        obs_latent_BC1hw=torch.randn(B, CFG.latent_channels, 1, H, W, generator=g),
        state_B32=torch.randn(B, 32, generator=g) if state else None,
        embodiment_id_B=torch.tensor([1, 3]),
        text_BLD=torch.randn(B, 3, CFG.text_dim, generator=g),
        text_mask_BL=torch.tensor([[True, True, False], [True, True, True]]),
        action_mask_B32=mask,
    )


def noises(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, P, 32, generator=g), torch.randn(B, CFG.latent_channels, K, H, W, generator=g)


@torch.no_grad()
def joint_step_by_step(m, ctx, a_noise, v_noise, num_steps=10, action_shift=5.0, video_shift=2.0):
    valid = ctx.action_valid(a_noise)
    xa, xv = a_noise * valid, v_noise.clone()
    sa, sv = sigma_schedule(num_steps, action_shift), sigma_schedule(num_steps, video_shift)
    for i in range(num_steps):
        out = m(
            ctx.obs_latent_BC1hw, xv, ctx.state_B32, ctx.embodiment_id_B, xa, sa[i].expand(B),
            sv[i].expand(B), ctx.text_BLD, ctx.text_mask_BL, "joint",
        )  # fmt: skip
        xa = xa + (sa[i + 1] - sa[i]) * (out.action_velocity_BP32 * valid)
        vv = velocity_of_clean(xv, out.video_velocity_BCKHW, sv[i].expand(B))
        xv = xv + (sv[i + 1] - sv[i]) * vv
    return xa, xv


@torch.no_grad()
def action_step_by_step(m, ctx, a_noise, num_steps=10, shift=5.0):
    valid = ctx.action_valid(a_noise)
    x, s = a_noise * valid, sigma_schedule(num_steps, shift)
    for i in range(num_steps):
        out = m(
            ctx.obs_latent_BC1hw, None, ctx.state_B32, ctx.embodiment_id_B, x, s[i].expand(B), None,
            ctx.text_BLD, ctx.text_mask_BL, "action",
        )  # fmt: skip
        x = x + (s[i + 1] - s[i]) * (out.action_velocity_BP32 * valid)
    return x


@pytest.mark.parametrize("state", [True, False])
def test_joint_sampler_equals_the_step_by_step_forward_bit_for_bit(model, state):
    ctx, (a_noise, v_noise) = context(state=state), noises()
    a, v = sample_joint(model, ctx, action_noise_BP32=a_noise, video_noise_BCKhw=v_noise)
    a_ref, v_ref = joint_step_by_step(model, ctx, a_noise, v_noise)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    assert a.abs().max() > 0.1 and (v - v_noise).abs().max() > 1e-3  # both really moved


def test_uncached_action_sampler_equals_the_step_by_step_forward_bit_for_bit(model):
    ctx, (a_noise, _) = context(), noises(2)
    got = sample_actions(model, ctx, action_noise_BP32=a_noise, use_cache=False)
    assert torch.equal(got, action_step_by_step(model, ctx, a_noise))
    assert got.abs().max() > 0.1


class Spy:
    """Counts calls of the time tables (``_time``) and of every RoPE builder the model reaches."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.time = self.rope = 0
        real_time = ActionVideoTransformer._time

        def time(m, *args, **kwargs):
            self.time += 1
            return real_time(m, *args, **kwargs)

        monkeypatch.setattr(ActionVideoTransformer, "_time", time)
        for module, name in (
            (tables_module, "rope_for_positions"),
            (tables_module, "rope_1d"),
            (model_module, "rope_1d"),
        ):
            monkeypatch.setattr(module, name, self._counted(getattr(module, name)))

    def _counted(self, fn):
        def wrapper(*a, **k):
            self.rope += 1
            return fn(*a, **k)

        return wrapper

    def counts(self, run) -> tuple[int, int]:
        self.time = self.rope = 0
        run()
        return self.time, self.rope


@pytest.mark.parametrize("sampler", ["joint", "uncached"])
def test_tables_are_built_once_per_chunk_not_per_step(model, monkeypatch, sampler):
    ctx, (a_noise, v_noise) = context(), noises()

    def run(steps: int):
        if sampler == "joint":
            return lambda: sample_joint(
                model, ctx, num_steps=steps, action_noise_BP32=a_noise, video_noise_BCKhw=v_noise
            )
        return lambda: sample_actions(model, ctx, num_steps=steps, action_noise_BP32=a_noise, use_cache=False)

    spy = Spy(monkeypatch)
    few, many = spy.counts(run(2)), spy.counts(run(7))
    assert few == many, f"tables rebuilt per step: (time, rope) calls {few} at 2 steps, {many} at 7"
    assert few[0] == 1 and few[1] > 0  # one time-table pass for the whole chunk; the RoPE was built
    # the control: the forward left to itself builds both at every step
    per_step = spy.counts(lambda: joint_step_by_step(model, ctx, a_noise, v_noise, num_steps=7))
    assert per_step[0] == 7 and per_step[1] >= 7


def test_forward_refuses_tables_of_another_sequence(model):
    ctx, (a_noise, v_noise) = context(), noises()
    s = torch.full((B,), 0.5)
    grid = torch.full((B, 1, 3), 0.5)
    args = (ctx.obs_latent_BC1hw, v_noise, ctx.state_B32, ctx.embodiment_id_B, a_noise, s, s, ctx.text_BLD)
    no_video = chunk_tables(model, grid[..., :2], (H, W), state=True, actions=True)  # 2 groups, no V RoPE
    with pytest.raises(ValueError, match=r"tables must hold \[B, G\] = \[2, 3\] time tables"):
        model(*args, ctx.text_mask_BL, "joint", tables=no_video.at(0))
    other_grid = chunk_tables(model, grid, (H, W + 2), state=True, actions=True, future_frames=K)
    with pytest.raises(ValueError, match="tables must hold the RoPE of this step's 25 tokens, got 34"):
        model(*args, ctx.text_mask_BL, "joint", tables=other_grid.at(0))
    with pytest.raises(ValueError, match=r"sigmas_BSG must have shape \[B, S, G\]"):
        chunk_tables(model, grid[:, 0], (H, W), state=True, actions=True)


class TablelessForward(ActionVideoTransformer):
    """A model kind whose forward takes no per-chunk tables (the samplers must still run it)."""

    def forward(self, obs, fut=None, state=None, emb=None, acts=None, s_a=None, s_v=None, text=None,
                text_mask=None, mode="joint"):  # fmt: skip
        return super().forward(obs, fut, state, emb, acts, s_a, s_v, text, text_mask, mode)


def test_a_forward_without_tables_is_run_step_by_step(model):
    other = TablelessForward(CFG)
    other.load_state_dict(model.state_dict())
    other.eval()
    ctx, (a_noise, v_noise) = context(), noises()
    a, v = sample_joint(other, ctx, action_noise_BP32=a_noise, video_noise_BCKhw=v_noise)
    a_ref, v_ref = sample_joint(model, ctx, action_noise_BP32=a_noise, video_noise_BCKhw=v_noise)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    got = sample_actions(other, ctx, action_noise_BP32=a_noise, use_cache=False)
    assert torch.equal(got, sample_actions(model, ctx, action_noise_BP32=a_noise, use_cache=False))
