"""The curation job end to end on a mixed corpus of good and bad simulated episodes.

Corpus (built here from Meta-World expert rollouts, nothing committed):

* source A, LeRobot v3.0: 4 good episodes (2 tasks × 2 seeds);
* source B, robomimic HDF5: a copy of one good episode (a near-duplicate across formats),
  a static clip (every frame the same), NaN actions, a 5-step episode (too short);
* source C: a folder that is no dataset at all (unknown layout).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from curation.formats.hdf5_robomimic import write_robomimic_hdf5
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.pipeline import CurateJob, job_from_dict, run
from curation.shards import content_digest, file_sha256, read_manifest
from schemas import FrameRef, Manifest, Sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from policy.envs import MetaWorldConfig, rollout_expert

    root = tmp_path_factory.mktemp("corpus")
    cfg = MetaWorldConfig(image_size=64, steps_after_success=4)
    good = []
    for task in ("drawer-open-v3", "button-press-topdown-v3"):
        episodes = [ep for ep in (rollout_expert(task, seed, cfg) for seed in range(4)) if ep is not None]
        good += episodes[:2]
    assert len(good) == 4
    write_lerobot_v3(good, root / "lerobot", repo_id="tests/good", codec="h264")

    frozen = good[1].cameras["high"].array[:1]
    static = good[1].with_(
        cameras={
            r: FrameRef(kind="inline", array=np.repeat(frozen, good[1].length, 0)) for r in ("high", "wrist")
        },
        action=(good[1].action * 0.5).astype(np.float32),
    )
    nan = good[2].with_(action=good[2].action.copy())
    nan.action[3, 1] = np.nan
    short = good[3].with_(
        action=good[3].action[:5],
        state=good[3].state[:5],
        timestamps=good[3].timestamps[:5],
        cameras={r: FrameRef(kind="inline", array=ref.array[:5]) for r, ref in good[3].cameras.items()},
    )
    write_robomimic_hdf5([good[0], static, nan, short], root / "bad.hdf5")
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a dataset")
    return {"lerobot": root / "lerobot", "hdf5": root / "bad.hdf5", "junk": root / "junk"}


def make_job(corpus, out: Path, **run_kw) -> CurateJob:
    return job_from_dict(
        {
            "sources": [str(corpus["lerobot"]), str(corpus["hdf5"]), str(corpus["junk"])],
            "out": str(out),
            "curation": {"preset": "debug"},
            "run": {"progress": False, "num_cpus": 2, **run_kw},
        }
    )


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def curated(corpus, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "ds"
    run(make_job(corpus, out, episodes_per_part=2))
    return out


def test_accounting_balances_stage_by_stage(curated):
    m = read_manifest(curated)
    c = m.counts
    assert c["episodes_in"] == 9  # 4 + 4 + 1 unlistable source
    assert c["episodes_with_samples"] == 4
    assert c["episodes_in"] == c["episodes_with_samples"] + c["episodes_rejected"]
    assert c["windows_in"] == c["samples"] + c["windows_rejected"]
    sc = m.stage_counts
    for stage, k in sc.items():
        assert k["in"] == k["out"] + k["rejected"], stage
    chain = ["ingest", "filter", "dedup", "decode", "window"]
    for a, b in itertools.pairwise(chain):
        assert sc[a]["out"] == sc[b]["in"], (a, b)
    assert sc["ingest"]["in"] == c["episodes_in"]
    assert sc["window"]["out"] == c["episodes_with_samples"]
    # every episode-level rejection is in the ledger with file and reason
    episode_rej = [r for r in m.rejections if r.window < 0]
    assert len(episode_rej) == c["episodes_rejected"]
    assert sum(s.episodes for s in m.sources) == c["episodes_in"]


def test_bad_inputs_are_caught_by_the_right_stage(curated):
    m = read_manifest(curated)
    reasons = Counter((r.stage, r.reason) for r in m.rejections if r.window < 0)
    assert reasons[("filter.duplicate", "near_duplicate")] == 1
    assert reasons[("filter.static_video", "static_video")] == 1
    assert reasons[("filter.length", "too_short")] == 1
    assert sum(n for (stage, reason), n in reasons.items() if "nan" in reason) == 1
    unknown = [r for r in m.rejections if r.reason == "unknown_layout"]
    assert len(unknown) == 1 and unknown[0].path.endswith("junk")
    static = next(r for r in m.rejections if r.reason == "static_video")
    assert static.path.endswith("bad.hdf5") and static.detail
    dup = next(r for r in m.rejections if r.reason == "near_duplicate")
    assert "near-duplicate of episode" in dup.detail


def test_shards_load_with_datasets_and_validate(curated):
    import datasets

    files = sorted(str(p) for p in (curated / "data").glob("shard-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    m = read_manifest(curated)
    assert len(ds) == m.counts["samples"] > 0
    for row in ds:
        sample = Sample.from_row(row).validate()
        assert sample.action.shape == (8, 32)  # debug preset: p = 8
        assert sample.action_mask[:4].all() and not sample.action_mask[4:].any()
        assert sample.text_embedding is not None
    ids = ds["sample_id"]
    assert len(set(ids)) == len(ids)


def test_normalised_actions_use_the_quantile_map(curated):
    import pyarrow.parquet as pq

    m = read_manifest(curated)
    st = m.stats["metaworld_sawyer"].action
    table = pq.read_table(curated / "data" / "shard-00000.parquet")
    actions = np.asarray(table.column("action").to_pylist(), dtype=np.float32)[..., :4].reshape(-1, 4)
    # q01 -> -1 and q99 -> +1: about 1 % of values fall outside [-1, 1] on each side
    for d in range(4):
        if st.q99[d] - st.q01[d] > 1e-3:
            frac = float(np.mean(np.abs(actions[:, d]) > 1.0 + 1e-6))
            assert frac < 0.1, (d, frac)


def test_rerun_skips_finished_work(curated, corpus):
    before = {p.name: p.stat().st_mtime_ns for p in (curated / "data").glob("*.parquet")}
    m = run(make_job(corpus, curated, episodes_per_part=2))
    after = {p.name: p.stat().st_mtime_ns for p in (curated / "data").glob("*.parquet")}
    assert before == after and isinstance(m, Manifest)


def test_bad_config_names_the_field(corpus, tmp_path):
    from curation.config import ConfigError

    with pytest.raises(ConfigError, match=r"run: unknown field 'worker'|run\.worker"):
        job_from_dict({"sources": ["x"], "out": str(tmp_path), "run": {"worker": 3}})
    with pytest.raises(ConfigError, match="did you mean 'debug'"):
        job_from_dict({"sources": ["x"], "out": str(tmp_path), "curation": {"preset": "debgu"}})


def _curate_cmd(corpus, out: Path) -> list[str]:
    cfg = {
        "sources": [str(corpus["lerobot"]), str(corpus["hdf5"]), str(corpus["junk"])],
        "out": str(out),
        "curation": {"preset": "debug"},
        "run": {"progress": False, "num_cpus": 2, "episodes_per_part": 1},
    }
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    return [sys.executable, "-m", "pipelines.curate", "--config", str(path)]


def test_interrupted_run_resumes_to_identical_shards(curated, corpus, tmp_path):
    out = tmp_path / "ds"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        _curate_cmd(corpus, out),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    parts = out / ".work" / "parts"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(parts.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    assert not (out / "meta" / "manifest.json").exists()
    done = subprocess.run(
        _curate_cmd(corpus, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already done" in done.stdout
    assert content_digest(out) == content_digest(curated)
    ours = {p.name: file_sha256(p) for p in (out / "data").glob("*.parquet")}
    theirs = {p.name: file_sha256(p) for p in (curated / "data").glob("*.parquet")}
    assert ours == theirs


def test_ray_job_submit_on_a_local_cluster(corpus, tmp_path):
    """``ray start --head`` then ``ray job submit … -- python -m pipelines.curate``."""
    out = tmp_path / "ds"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": bindir + os.pathsep + os.environ["PATH"]}
    ray = str(Path(bindir) / "ray")
    start = subprocess.run(
        [ray, "start", "--head", "--num-cpus", "2", "--port", "6391", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", "8267", "--include-dashboard", "true", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        cfg = _curate_cmd(corpus, out)[-1]
        cmd = [ray, "job", "submit", "--address", "http://127.0.0.1:8267", "--working-dir", str(ROOT), "--",
               "python", "-m", "pipelines.curate", "--config", cfg]  # fmt: skip
        deadline, result = time.time() + 120, None
        while time.time() < deadline:
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
            if "No available agent" not in result.stdout + result.stderr:
                break
            time.sleep(3)  # the dashboard agent is still starting
        assert result is not None and result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "phase 2 (samples)" in result.stdout  # progress reaches the submitter
        m = read_manifest(out)
        assert m.counts["episodes_with_samples"] == 4 and m.counts["samples"] > 0
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
