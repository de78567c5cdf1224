"""The compiled action-only Euler step (issue #20): ``Policy(compile=True)``.

One tiny policy (the ``debug`` model at one layer) is compiled once for the module, on CPU with
inductor (it needs a C++ compiler). Compiled and eager actions agree to 1e-5 in the robot's
units: both run in fp32, but inductor fuses and may reorder the elementwise arithmetic (norms,
modulation, the Euler update), so they are not bit-identical (measured difference ~1e-7).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from pipelines import evaluate as evaluate_cli
from pipelines import serve as serve_cli
from policy import Policy
from policy.inference import CompiledStep, Context, default_compile_mode, euler_step, sample_actions
from pretrain.flow import sigma_schedule
from schemas import get_embodiment
from tests.support.tiny_policy import tiny_policy_model

SPEC = get_embodiment("metaworld_sawyer")
P = 8


def make_policy(**kw) -> Policy:
    return Policy(tiny_policy_model((SPEC,), chunk=P, layers=1), **kw)


def observation(seed: int, instruction: str = "open the drawer") -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {role: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for role in SPEC.cameras},
        "state": rng.normal(size=SPEC.state_dim),
        "instruction": instruction,
    }


@pytest.fixture(scope="module")
def compiled() -> Policy:
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.fail("torch.compile on CPU needs a C++ compiler (g++): install it to run this test")
    torch._dynamo.reset()
    return make_policy(compile=True)


@pytest.mark.slow
def test_compiled_actions_match_eager_and_later_chunks_do_not_recompile(compiled):
    eager = make_policy()
    assert compiled.compiled_step is not None and compiled.compiled_step.mode == "default"  # CPU
    counters.clear()
    first = compiled.predict_action(observation(0), seed=0)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1, f"one graph for every step of the chunk, got {graphs}"
    np.testing.assert_allclose(first, eager.predict_action(observation(0), seed=0), atol=1e-5, rtol=1e-5)
    # new observations and noise of the same shapes: served by the graph already compiled
    for seed in (1, 2):
        got = compiled.predict_action(observation(seed), seed=seed)
        np.testing.assert_allclose(
            got, eager.predict_action(observation(seed), seed=seed), atol=1e-5, rtol=1e-5
        )
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled for inputs of the same shapes"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert np.abs(first - got).max() > 1e-3  # different observations give different actions
    # guided sampling (real-time chunking) differentiates through the step and stays eager
    prev = first[2:]
    guided = compiled.predict_action_guided(observation(3), prev, delay=2, seed=3)
    np.testing.assert_array_equal(guided[:2], prev[:2])
    assert counters["stats"]["unique_graphs"] == graphs


def test_the_step_is_one_graph_without_host_syncs():
    """``torch._dynamo.explain`` traces the step (no inductor): no graph break, one graph."""
    torch._dynamo.reset()
    m = tiny_policy_model((SPEC,), chunk=P, layers=1).transformer.eval()
    g = torch.Generator().manual_seed(0)
    cache = m.encode_context(
        torch.randn(1, 48, 1, 8, 8, generator=g),
        state_B32=torch.randn(1, 32, generator=g),
        embodiment_id_B=torch.tensor([SPEC.id]),
        text_BLD=torch.randn(1, 4, m.cfg.text_dim, generator=g),
    )
    sig = sigma_schedule(10, 5.0)
    steps = m.action_steps(cache, sig[:-1].expand(1, 10))
    valid = (torch.arange(32) < SPEC.action_dim).float()[None, None]
    x = torch.randn(1, P, 32, generator=g) * valid
    with torch.no_grad():
        explained = torch._dynamo.explain(euler_step)(m, cache, x, steps.at(3), sig[4] - sig[3], valid)
        eager = euler_step(m, cache, x, steps.at(3), sig[4] - sig[3], valid)
        # the step's slice gives the same numbers as the whole chunk's tables indexed at step 3
        whole = x + (sig[4] - sig[3]) * m.forward_actions(cache, x, steps=steps, step=3) * valid
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert torch.equal(eager, whole)


def test_compile_option_is_checked_and_plumbed(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="compile mode must be one of"):
        make_policy(compile="fastest")
    assert make_policy().compiled_step is None
    # CUDA graphs where they exist (batch-1 steps are launch-bound there), inductor's default on CPU
    assert (default_compile_mode("cuda"), default_compile_mode("cpu")) == ("reduce-overhead", "default")
    assert (
        make_policy(compile="max-autotune-no-cudagraphs").compiled_step.mode == "max-autotune-no-cudagraphs"
    )
    model = tiny_policy_model((SPEC,), chunk=P, layers=1)
    model.save_pretrained(tmp_path / "policy")
    loaded = Policy.from_pretrained(tmp_path / "policy", compile=True)
    assert isinstance(loaded.compiled_step, CompiledStep) and loaded.compiled_step.mode == "default"
    with pytest.raises(ValueError, match="step_fn runs cached, unguided sampling only"):
        ctx, _, _ = loaded.prepare(observation(0))
        sample_actions(loaded.model.transformer, ctx, use_cache=False, step_fn=loaded.compiled_step)

    # the CLIs hand --compile to Policy.from_pretrained
    seen: list[dict] = []

    def fake_from_pretrained(cls, *args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("not loading in this test")

    monkeypatch.setattr(Policy, "from_pretrained", classmethod(fake_from_pretrained))
    assert serve_cli.main(["--policy", str(tmp_path / "policy"), "--port", "0", "--compile"]) == 1
    assert seen[-1]["compile"] is True
    assert serve_cli.main(["--policy", str(tmp_path / "policy"), "--port", "0"]) == 1
    assert seen[-1]["compile"] is False
    with pytest.raises(evaluate_cli.PolicyLoadError, match="not loading in this test"):
        evaluate_cli.load_policy(str(tmp_path / "policy"), compile=True)
    assert seen[-1] == {"compile": True}
    assert evaluate_cli.build_parser().parse_args(["--policy", "x", "--out", "o", "--compile"]).compile


def test_the_step_is_shared_across_models_and_instruction_lengths():
    """Dynamo's guards on the step (its ``eager`` backend: tracing and guards, no code generation):
    another model of the same config reuses the graph (its weights are graph inputs); a new
    instruction length recompiles once, after which the text length is dynamic."""
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(euler_step, fullgraph=True, backend="eager")
    g = torch.Generator().manual_seed(0)
    policies = [tiny_policy_model((SPEC,), seed=s, chunk=P, layers=1).transformer.eval() for s in (0, 1)]
    valid = (torch.arange(32) < SPEC.action_dim)[None]

    def run(m, text_len: int) -> None:
        ctx = Context(
            torch.randn(1, 48, 1, 8, 8, generator=g), torch.randn(1, 32, generator=g), torch.tensor([SPEC.id]),
            torch.randn(1, text_len, m.cfg.text_dim, generator=g), None, valid,
        )  # fmt: skip
        noise = torch.randn(1, P, 32, generator=g)
        got = sample_actions(m, ctx, action_noise_BP32=noise, step_fn=step)
        assert torch.equal(got, sample_actions(m, ctx, action_noise_BP32=noise))  # same ops, no codegen

    graphs = []
    for m, text_len in (
        (policies[0], 4),
        (policies[1], 4),
        (policies[0], 7),
        (policies[1], 11),
        (policies[0], 2),
    ):
        run(m, text_len)
        graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs == [1, 1, 2, 2, 2], graphs
