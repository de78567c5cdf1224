"""The ablation benchmark (benchmarks/ablation.py) on its `smoke` preset: real trainings and
closed-loop evaluations, summarised into a table, a plot and JSON; a rerun skips every finished step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_ablation(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.ablation", "--out", str(out), "--preset", "smoke", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_ablation_summarises_real_cells_and_resumes(tmp_path):
    out = tmp_path / "ablation"
    first = run_ablation(out)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    summary = json.loads((out / "ablation.json").read_text())
    assert list(summary["arms"]) == ["gwp", "scratch"]
    # every cell is a real fine-tune and evaluation, and the summary is made of its episodes
    for arm, per_task in summary["arms"].items():
        pooled = 0
        for seed in range(2):
            cell = out / "cells" / arm / f"seed{seed}"
            assert (cell / "policy" / "final" / "model.safetensors").exists()
            rec = json.loads((cell / "eval" / arm / "results.json").read_text())
            assert rec["policy"] == arm
            assert all(e["task"] == "button-press-topdown-v3" for e in rec["episodes"])
            pooled += sum(bool(e["success"]) for e in rec["episodes"])
            assert per_task["all"]["rates"][seed] == sum(bool(e["success"]) for e in rec["episodes"]) / len(
                rec["episodes"]
            )
        stats = per_task["button-press-topdown-v3"]
        assert stats["successes"] == pooled and stats["episodes"] == 2
        assert 0 <= stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1] <= 1
        assert stats["min"] <= stats["mean"] <= stats["max"]
    # pretrained arm: its fine-tune started from its own seed's pretraining; scratch from none
    for seed in range(2):
        gwp_log = (out / "cells" / "gwp" / f"seed{seed}" / "log.txt").read_text()
        assert f"pretrain/with_video/seed{seed}/final" in gwp_log and f"--seed {seed}" in gwp_log
        assert "--init none" in (out / "cells" / "scratch" / f"seed{seed}" / "log.txt").read_text()
    table = (out / "ablation.md").read_text()
    assert "| gwp |" in table and "| scratch |" in table and "CI [" in table
    assert (out / "ablation.png").stat().st_size > 0

    done = {p: p.stat().st_mtime_ns for p in out.rglob("done.json")}
    assert len(done) == 2 + 2 + 4  # sources and their curation, two pretrainings, four cells
    assert not (out / "data" / "demos_only").exists()  # only the no_actionfree arms need it
    second = run_ablation(out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skipped") == len(done)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("done.json")} == done  # nothing ran again
    assert json.loads((out / "ablation.json").read_text())["arms"] == summary["arms"]


def test_ablation_refuses_an_unknown_arm(tmp_path):
    bad = run_ablation(tmp_path / "a", "--arms", "gwp,wat")
    assert bad.returncode == 2
    assert "unknown arms ['wat']" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "a").exists()
