"""Real-time chunking: the guided sampler, the execution modes and their closed-loop evaluation.

* off means off: a guide whose weights are all 0 gives the unguided actions bit for bit (and the
  unguided path is the existing one: tests/test_policy_inference.py still holds);
* on, the guided chunk continues the old one: its frozen prefix equals it and the overlap is
  much closer to it than an unguided chunk's;
* the executor runs exactly the actions the modes define, and splits the action jumps into
  switch steps and the rest;
* the closed-loop bench runs every mode and delay on a tiny policy in Meta-World.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from policy.api import Policy
from policy.execution import (
    EXECUTION_PRESETS,
    EpisodeExecution,
    ExecutionConfig,
    get_execution_config,
    prefix_weights,
)
from policy.inference import Context, Guide, guidance_weight, sample_actions
from schemas import get_embodiment
from schemas.errors import ConfigError
from schemas.registry import UnknownNameError
from tests.support.tiny_policy import tiny_policy_model

P = 8
SMALL_ENV = ("--max-steps", "24", "--image-size", "64", "--tasks", "drawer-open-v3")
SPEC = get_embodiment("metaworld_sawyer")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(tiny_policy_model((SPEC,), chunk=P))


def obs(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {r: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for r in SPEC.cameras},
        "state": rng.normal(size=SPEC.state_dim),
        "instruction": "open the drawer",
    }


def test_prefix_weights_follow_the_paper():
    w = prefix_weights(8, 2, 3, "exp")  # frozen [0, 2), overlap [2, 5), nothing from 5 on
    c = np.array([3, 2, 1]) / 4  # (P − s − i) / (P − s − d + 1) for i = 2, 3, 4
    np.testing.assert_allclose(w, [1, 1, *(c * np.expm1(c) / (math.e - 1)), 0, 0, 0], rtol=1e-6)
    assert np.all(np.diff(w) <= 0) and w[2] < 1
    np.testing.assert_allclose(prefix_weights(8, 2, 3, "linear")[2:5], c, rtol=1e-6)
    np.testing.assert_array_equal(prefix_weights(8, 0, 8, "exp"), np.zeros(8))
    np.testing.assert_array_equal(prefix_weights(8, 2, 3, "ones"), [1, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="delay <= chunk - horizon"):
        prefix_weights(8, 4, 6)
    assert guidance_weight(1.0, 5.0) == 5.0 and guidance_weight(0.0, 5.0) == 0.0
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (0.25 + 0.25) / 0.25
    assert guidance_weight(0.5, 1.5) == 1.5


def _ctx(policy: Policy) -> Context:
    return policy.prepare(obs())[0]


def test_a_guide_with_zero_weights_changes_nothing(policy):
    ctx = _ctx(policy)
    noise = torch.randn(1, P, 32, generator=torch.Generator().manual_seed(3))
    plain = sample_actions(policy.model.transformer, ctx, action_noise_BP32=noise)
    guide = Guide(torch.randn(1, P, 32), torch.zeros(1, P, 32), 5.0)
    guided = sample_actions(policy.model.transformer, ctx, action_noise_BP32=noise, guide=guide)
    assert torch.equal(plain, guided)


def test_the_guided_chunk_continues_the_old_one(policy):
    o = obs()
    old = policy.predict_action(o, seed=0)
    s, d = 3, 2
    prev = old[s:]  # [P − s, 4]
    naive = policy.predict_action(o, seed=1)
    rtc = policy.predict_action_guided(o, prev, d, seed=1)
    assert rtc.shape == (P, 4)
    np.testing.assert_array_equal(rtc[:d], prev[:d])
    overlap = slice(d, P - s)
    gap_rtc = np.linalg.norm(rtc[overlap] - prev[d:], axis=1)
    gap_naive = np.linalg.norm(naive[overlap] - prev[d:], axis=1)
    # the soft weights decay over the overlap: strongest pull at the switch step (index d)
    assert gap_rtc[0] < 0.5 * gap_naive[0] and gap_rtc.mean() < gap_naive.mean(), (gap_rtc, gap_naive)
    with pytest.raises(ValueError, match=r"inference delay must be in \[0, 5\]"):
        policy.predict_action_guided(o, prev, 6)
    with pytest.raises(ValueError, match=r"prev_actions must have shape \[q, 4\]"):
        policy.predict_action_guided(o, old, 1)  # q must be < P


def _chunk(k: int) -> np.ndarray:
    return np.stack([np.full(4, 10 * k + i, np.float32) for i in range(P)])  # [P, 4]: value 10k + index


def _run(mode: str, d: int, s: int, n: int = 3) -> tuple[EpisodeExecution, list[np.ndarray]]:
    ex = EpisodeExecution(
        ExecutionConfig(mode=mode, horizon=s, delay=d), lambda last: np.full(4, -1, np.float32)
    )
    return ex, [ex.next_actions(_chunk(k)) for k in range(n)]


def test_execution_modes_run_what_they_promise():
    ex, runs = _run("sync", 2, 3)
    assert [r[:, 0].tolist() for r in runs] == [[-1, -1, 0, 1, 2], [-1, -1, 10, 11, 12], [-1, -1, 20, 21, 22]]
    switch, other = ex.discontinuity(10**6)
    assert switch == pytest.approx([16.0, 16.0]) and other == pytest.approx([2.0] * 6)  # 2 -> 10 in 4 dims
    ex, runs = _run("naive", 2, 3)
    # first chunk: hold for d, then [0, s); then the old chunk's [s, s + d) and the new one's [d, s)
    assert [r[:, 0].tolist() for r in runs] == [[-1, -1, 0, 1, 2], [3, 4, 12], [13, 14, 22]]
    switch, _ = ex.discontinuity(10**6)
    assert switch == pytest.approx([8 * 2.0, 8 * 2.0])  # 4 -> 12, 14 -> 22
    assert ex.discontinuity(6)[0] == []  # the episode ended before the first switch
    ex, _ = _run("rtc", 2, 3, n=1)
    np.testing.assert_array_equal(ex.guidance(), _chunk(0)[3:])
    assert _run("naive", 2, 3, n=1)[0].guidance() is None


def test_execution_config_is_checked():
    assert set(EXECUTION_PRESETS.names()) == {"sync", "naive", "rtc"}
    assert get_execution_config("rtc", delay=2).mode == "rtc"
    with pytest.raises(UnknownNameError, match="did you mean 'rtc'"):
        get_execution_config("rct")
    with pytest.raises(ConfigError, match="mode: must be one of"):
        ExecutionConfig(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="delay: must be >= 0"):
        ExecutionConfig(delay=-1)
    with pytest.raises(ConfigError, match="delay <= horizon <= chunk - delay"):
        ExecutionConfig(mode="rtc", delay=4, horizon=5).check_chunk(8)


def test_bench_runs_every_mode_and_delay_in_closed_loop(policy):
    from benchmarks.bench_rtc import build_parser, markdown, run_table

    args: argparse.Namespace = build_parser().parse_args(
        ["--policy", "x", "--delays", "0,2,8", "--episodes", "1", "--horizon", "4", *SMALL_ENV]
    )
    rows = run_table(policy, P, args)
    by = {(r["delay"], r["mode"]): r for r in rows}
    assert len(rows) == 9
    assert by[(8, "naive")]["horizon"] is None and by[(8, "rtc")]["horizon"] is None  # 8 > P − 8
    assert by[(8, "sync")]["horizon"] == 4
    for key, r in by.items():
        if r["horizon"] is None:
            continue
        assert r["episodes"] == 1 and r["mean_length"] == 24, key  # a random policy never succeeds
        assert r["switches"] > 0 and np.isfinite(r["switch_mean"]), key
    # the guided chunk starts where the old one is: far smaller jumps at the switch than naive
    assert by[(2, "rtc")]["switch_mean"] < by[(2, "naive")]["switch_mean"]
    assert "| 8 | naive | n/a |" in markdown(rows)


def test_bench_section_says_what_ran_where_and_on_what():
    from benchmarks.bench_rtc import build_parser, section

    argv = ["--policy", "runs/p", "--tasks", "a-v3,b-v3", "--delays", "0,8", "--episodes", "10", "--horizon", "8"]  # fmt: skip
    args = build_parser().parse_args(argv)
    cell = {"episodes": 20, "successes": 5, "success_rate": 0.25, "ci95": [0.11, 0.47], "mean_length": 150.0,
            "switch_mean": 0.25, "elsewhere_mean": 0.125, "switches": 40}  # fmt: skip
    rows = [
        {"delay": 0, "mode": "sync", "horizon": 8, **cell},
        {"delay": 8, "mode": "rtc", "horizon": 8, **cell},
        {"delay": 8, "mode": "naive", "horizon": None},
    ]
    text = section(argv, args, 16, rows, [3.0, 9.5, 4.25], 1800.0)
    head, blank, *table = text.splitlines()
    assert head.startswith("`python -m benchmarks.bench_rtc --policy runs/p --tasks a-v3,b-v3 --delays 0,8 ")
    for part in ("(commit `", "load average 3.0–9.5", "30 min", "policy `runs/p`", "chunk P = 16",
                 "horizon s = 8,", "10 episodes per task and cell, 20 per cell", "(a-v3, b-v3)"):  # fmt: skip
        assert part in head, part
    assert blank == "" and table[0].startswith("| delay d | mode |") and len(table) == 2 + len(rows)
    assert table[2] == "| 0 | sync | 8 | 5/20 (25 %, CI 11–47 %) | 0.250 | 0.125 | 150 |"
    assert table[3] == "| 8 | naive | n/a | n/a | n/a | n/a | n/a |"  # by delay, then mode
    assert table[4].startswith("| 8 | rtc | 8 | 5/20")
