"""The GPU check script runs on CPU in its reduced form: GWP's token layout, ZeRO-2 training with
activation checkpointing through DeepSpeed, and both samplers' latency, written as JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_reduced_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--reduced", "--device", "cpu", "--out", str(out)]
    cmd += ["--batch", "2", "--train-steps", "2", "--warmup", "1", "--repeats", "2"]
    # a world of one on its own port: drop the launcher variables an in-process run of this session set
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["geometry"] == "clip" and report["image"] == [384, 320]
    assert report["tokens"] == {"context": 121, "action": 48, "video": 120}
    train = report["train"]
    assert train["zero_stage"] == 2 and train["activation_checkpointing"] and train["steps"] == 2
    assert all(math.isfinite(x) for x in train["losses"]) and train["step_s"] > 0
    assert train["model_tflops_per_step"] > 0 and train["mfu"] is None  # no known peak on CPU
    lat = report["latency"]
    assert lat["action_only"]["p50_s"] > 0 and lat["joint"]["p50_s"] > 0
    assert lat["token_pass_bound"] == pytest.approx(10 * 289 / (121 + 480))
    assert lat["joint_over_action_only"] == pytest.approx(lat["joint"]["p50_s"] / lat["action_only"]["p50_s"])


def test_the_full_check_refuses_to_run_on_cpu(tmp_path):
    from benchmarks import gpu_check

    with pytest.raises(SystemExit, match="needs a GPU"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "x.json")])
