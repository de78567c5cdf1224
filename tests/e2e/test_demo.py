"""The demo end to end (the `smoke` preset: every stage, minutes not half an hour), and its resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("generate", "curate", "pretrain", "finetune", "finetune_no_video", "evaluate", "evaluate_openloop")


def run_demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "--out", str(out), "--preset", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.done").exists(), stage
    # two source formats really mixed in one curated dataset
    manifest = json.loads((out / "shards" / "meta" / "manifest.json").read_text())
    assert sorted(s["format"] for s in manifest["sources"]) == ["lerobot_v3", "rlds"]
    assert all(s["episodes"] == 4 for s in manifest["sources"])  # 2 tasks × 2 episodes in each
    assert manifest["counts"]["samples"] > 0
    assert (out / "policy" / "final" / "model.safetensors").exists()
    comparison = json.loads((out / "eval" / "comparison.json").read_text())
    assert {"gwp", "gwp_no_video", "expert", "random"} <= set(json.dumps(comparison).split('"'))
    report = (out / "REPORT.md").read_text()
    for link in (
        "shards/meta/report/index.md",
        "eval/comparison.md",
        "losses.png",
        "eval/openloop/openloop.md",
        "eval/openloop/frames.png",
        "eval/gwp/contact_sheet.png",
    ):
        assert link in report and (out / link).exists(), link
    assert (out / "losses.png").stat().st_size > 0

    second = run_demo(out)  # idempotent: every stage is skipped
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skipped") == len(STAGES)
