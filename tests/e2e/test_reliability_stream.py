"""Streamed fine-tuning under faults: killed and resumed, a cache smaller than the data, a flaky Hub.

The dataset (curated simulated episodes, rewritten as three shards of 4-row row groups) is pushed to
the local Hub server. ``python -m pipelines.finetune --stream`` reads it from there row group by row
group with a cache of a third of its size, is SIGKILLed after a checkpoint, and the same command is
run again: the loss curve of the two halves must equal an uninterrupted run on the local folder. The
rows land in RELIABILITY.md (``python -m benchmarks.reliability``) through the Recorder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from curation.in_memory import curate_in_memory
from pretrain.data import ShardSet
from pretrain.stream import StreamConfig
from tests.policy.test_policy import save_backbone
from tests.pretrain.test_stream import reshard
from tests.support.faults import Recorder
from tests.support.helpers import make_episodes

pytest_plugins = ["tests.support.hub_fixture"]

ROOT = Path(__file__).resolve().parents[2]
REC = Recorder()
STEPS, CKPT = 8, 3
LENGTHS = (24, 30, 20, 26)


def _metric_steps(out: Path) -> list[int]:
    p = out / "metrics.jsonl"
    return [json.loads(ln)["step"] for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def _losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, filter(str.strip, lines))}


def _finetune(data: str, out: Path, backbone: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.finetune", "--preset", "debug", "--init", str(backbone),
        "--data", data, "--out", str(out), "--steps", str(STEPS), "--ckpt-every", str(CKPT),
        "--batch-size", "2", "--no-progress", "--threads", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stream_e2e")
    curated = curate_in_memory(make_episodes(LENGTHS, size=64), root / "curated")
    save_backbone(root / "backbone")
    return reshard(curated, root / "shards"), root / "backbone"


def test_streamed_finetune_killed_and_resumed_equals_an_uninterrupted_local_run(dataset, hub_env, tmp_path):
    data, backbone = dataset
    env = {**hub_env.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    repo = hub_env.new_repo_id("stream-finetune")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=str(data), repo_id=repo, repo_type="dataset")
    data_bytes = sum(p.stat().st_size for p in ShardSet.open(data).shards)
    cache_mb = data_bytes / 3 / 2**20
    cache = tmp_path / "cache"
    stream_args = ("--stream", "--stream-cache-mb", f"{cache_mb:.6f}", "--stream-cache-dir", str(cache))

    ref = tmp_path / "local"
    done = subprocess.run(_finetune(str(data), ref, backbone), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "streamed"
    cmd = _finetune(repo, out, backbone, *stream_args)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 600
        while max(_metric_steps(out), default=0) < CKPT + 1:
            if proc.poll() is not None:
                raise AssertionError(
                    f"exited ({proc.returncode}) before step {CKPT + 1}: {proc.stderr.read()[-3000:]}"
                )
            assert time.time() < deadline, "timed out waiting for the streamed run"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = max(_metric_steps(out))
    assert proc.returncode == -signal.SIGKILL and killed_at < STEPS, "finished before it could be killed"
    assert not (out / "final").exists()
    cached_at_kill = sum(p.stat().st_size for p in cache.rglob("*.arrow"))

    hub_env.server.requests.clear()
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _losses(ref), _losses(out)
    worst = max(abs(got[s] - want[s]) / max(abs(want[s]), 1e-12) for s in want)
    record = json.loads((out / "run_config.json").read_text())["data"]
    gets = hub_env.server.requests_matching(r"^GET .*/resolve/.*\.parquet")
    cached = sum(p.stat().st_size for p in cache.rglob("*.arrow"))
    checks = {
        "every step, same losses": sorted(got) == list(range(1, STEPS + 1)) == sorted(want) and worst < 1e-5,
        "run record": record["stream"]["cache_mb"] == float(f"{cache_mb:.6f}") and record["source"] == repo,
        "byte ranges only": bool(gets) and all(status == 206 for _, _, status in gets),
        "cache bounded": max(cached, cached_at_kill) <= cache_mb * 2**20 < data_bytes,
        "no download": not any((hub_env.home / "hub").rglob("*.parquet")),
    }
    ok = all(checks.values())
    REC.add(
        "crash",
        "streamed fine-tuning SIGKILL",
        f"`pipelines.finetune --stream` from the local Hub ({data_bytes} B of shards, cache {cached_at_kill} B "
        f"≤ {cache_mb * 2**20:.0f} B) SIGKILLed at step {killed_at} of {STEPS}, checkpoints every {CKPT}",
        "the rerun resumes at the checkpoint's row; same loss curve as an uninterrupted local run",
        f"max relative |Δloss| {worst:.1e} over {len(got)} steps; {len(gets)} range GETs on resume; "
        f"cache {cached} B",
        ok,
    )
    assert ok, (checks, want, got, gets[:5], cached, cache_mb)


def test_streaming_survives_a_flaky_hub_and_names_a_missing_shard(dataset, hub_env, tmp_path):
    from pretrain.data import LoaderConfig, ShardLoader

    data, _ = dataset
    repo = hub_env.new_repo_id("stream-faults")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=str(data), repo_id=repo, repo_type="dataset")
    lc = LoaderConfig(batch_size=4, seed=2)
    want = [b["sample_id"] for _, b in zip(range(4), ShardLoader(data, lc), strict=False)]
    hub_env.server.fail_requests(r"^GET .*/resolve/.*\.parquet", 503, times=2)
    cfg = StreamConfig(cache_mb=0.2, cache_dir=str(tmp_path / "c"))
    got = [
        b["sample_id"]
        for _, b in zip(range(4), ShardLoader(ShardSet.open(repo, stream=cfg), lc), strict=False)
    ]
    ok = got == want and hub_env.server.pending_faults() == 0
    REC.add(
        "hub",
        "streamed row group: transient 503",
        "the local Hub answers the first 2 byte-range GETs of shards with 503",
        "retried by the client; the same batches as the local folder",
        f"same batches: {got == want}; faults left {hub_env.server.pending_faults()}",
        ok,
    )
    assert ok

    shutil.rmtree(tmp_path / "c")
    api.delete_file("data/shard-00002.parquet", repo_id=repo, repo_type="dataset")
    try:
        ShardSet.open(repo, stream=cfg)
        err = ""
    except FileNotFoundError as e:
        err = str(e)
    ok = "shard-00002.parquet: listed in the manifest but missing" in err and repo in err
    REC.add(
        "hub",
        "streamed dataset: shard missing",
        "a shard listed in the manifest deleted from the Hub repo",
        "FileNotFoundError naming the shard's URL, before training starts",
        err or "no error",
        ok,
    )
    assert ok, err
