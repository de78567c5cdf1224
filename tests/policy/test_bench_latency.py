"""``python -m benchmarks.bench_latency``: geometry, kinds as ModelConfig overrides, output, errors.

A smoke run on the ``debug`` geometry with one round, eager only (the compiled sampler it
times is :class:`policy.inference.CompiledStep`, tested in ``test_compiled_step.py``).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import bench_latency as bench
from pretrain.config import ModelConfig


def test_gwp_geometry_and_the_expert_kind():
    base, latent_hw = bench.base_config("gwp", 512, 4)
    setup = bench.Setup("dense", base, latent_hw)
    C, A, V = setup.tokens()
    assert (C, A, V) == (121, 48, 120)  # GWP: 1 + 120 context, 48 actions, one clip latent frame
    assert (base.dim, base.heads, base.head_dim, base.layers) == (512, 8, 64, 4)
    per_frame, _ = bench.base_config("per-frame", 512, 4)
    assert bench.Setup("dense", per_frame, latent_hw).tokens() == (121, 48, 480)
    # 512 / 3 ≈ 171 → 192, three of the backbone's 64-wide heads; FFN 4× as GWP-0.5's 1024 / 4096
    kinds = bench.kind_overrides(base, 3.0)
    assert kinds["dense"] == {}
    assert kinds["expert"] == {"action_expert_dim": 192, "action_expert_ffn_dim": 768}
    debug, _ = bench.base_config("debug", 512, 4)
    assert bench.kind_overrides(debug, 3.0)["expert"]["action_expert_dim"] == 32  # 64 / 3 → 2 heads of 16
    # the full wan22-5b backbone: GWP-0.5's expert, 3072 / 3 = 1024 wide (8 heads of 128), FFN 4096
    full, _ = bench.base_config("gwp", 512, 4, full=True)
    assert (full.dim, full.layers) == (3072, 30)
    assert bench.Setup("dense", full, latent_hw).tokens() == (121, 48, 120)
    assert bench.kind_overrides(full, 3.0)["expert"] == {
        "action_expert_dim": 1024,
        "action_expert_ffn_dim": 4096,
    }


def test_smoke_run_prints_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "latency.json"
    argv = [
        "--geometry",
        "debug",
        "--kinds",
        "dense,one",
        "--set",
        "one.layers=1",
        "--set",
        "one.qk_norm=false",
    ]
    argv += ["--repeats", "1", "--warmup", "0", "--no-compile", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    table, _, doc_text = printed.partition("\n\n{")
    doc = json.loads("{" + doc_text)
    assert doc == json.loads(out.read_text())
    assert "`python -m benchmarks.bench_latency --geometry debug" in table and "commit `" in table
    assert "| dense (debug-dense) |" in table and "| one (debug-one) |" in table
    dense, one = doc["rows"]
    assert (dense["C"], dense["A"], dense["V"]) == (65, 48, 256)
    assert dense["token_bound"] == pytest.approx(10 * (65 + 48 + 256) / (65 + 10 * 48))  # 6.77
    assert one["model"]["layers"] == 1 and one["model"]["qk_norm"] is False and dense["model"]["layers"] == 2
    for r in (dense, one):
        assert set(r) >= {"action", "joint", "joint_over_action", "token_bound", "action_speedup_vs_dense"}
        assert 0 < r["action"]["p50"] <= r["action"]["p95"] and r["joint"]["p50"] > 0
        assert "action_compiled" not in r
        # per denoising step: what the chunk costs beyond its one context pass, over the 10 steps
        assert r["context"]["p50"] > 0 and r["action_per_step"] == pytest.approx(
            max(0.0, r["action"]["p50"] - r["context"]["p50"]) / 10
        )
    assert "| dense | " in table and "per step vs dense" in table
    assert dense["action_speedup_vs_dense"] == 1.0
    assert doc["meta"]["geometry"] == "debug" and doc["meta"]["repeats"] == 1


def test_the_expert_kind_runs_or_is_refused_by_name(capsys):
    """Runs where this checkout's ModelConfig has the action expert's fields; else a clear refusal."""
    argv = ["--geometry", "debug", "--kinds", "expert", "--repeats", "1", "--warmup", "0", "--no-compile"]
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    code = bench.main(argv)
    if "action_expert_dim" in fields:
        assert code == 0 and "| expert (debug-expert) |" in capsys.readouterr().out
    else:
        assert code == 2
        assert "kind 'expert': ModelConfig has no field 'action_expert_dim'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "dense.no_such_field=1"], "kind 'dense': ModelConfig has no field 'no_such_field'"),
        (["--set", "dense.layers=two"], "kind 'dense', layers: 'two' is not of type int"),
        (["--set", "layers=2"], "expected KIND.FIELD=VALUE"),
        (["--kinds", "dense,huge"], "unknown kind(s) ['huge']"),
        (["--width", "100"], "--width must be a positive multiple of 64"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(argv, message, capsys):
    assert bench.main(["--geometry", "debug", "--kinds", "dense", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
