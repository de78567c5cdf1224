"""Multi-node curation: a 3-node Ray cluster on this machine loses a worker node mid-job, and the
job still gives the shards, manifest and ledger of a single-node run, byte for byte.

The cluster is Ray's own test utility (``ray.cluster_utils.Cluster``): a head node with no CPUs
(it holds the GCS and the driver, so that every task must run on a worker node) and two worker
nodes of one CPU each, every node its own raylet and object store, all on this machine; the
source and the output folder are on the local disk, which every "node" sees, as shared storage
would on a real cluster. Once the first work part exists, the raylet of a worker node that is
running a task, and every worker process under it, are SIGKILLed. Ray retries the lost tasks
on the surviving node; each part and shard is written atomically and the driver counts
episodes from the part files, not from task results, so a retried task changes nothing and
counts nothing twice.

The row it records (``tests/support/faults.py:Recorder``) is in RELIABILITY.md
(``python -m benchmarks.reliability`` collects every ``test_reliability*.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.pipeline import job_from_dict, run
from curation.shards import LEDGER_PATH, MANIFEST_PATH, file_sha256
from tests.support.faults import Recorder
from tests.support.helpers import make_episodes

REC = Recorder()
EPISODES = 10  # one part each: enough parts that both worker nodes are busy when one dies
SHORT = 5  # one episode shorter than the debug preset's min_steps: a ledger entry to count


def job_dict(src: Path, out: Path) -> dict:
    return {
        "sources": [str(src)],
        "out": str(out),
        "curation": {
            "preset": "debug",
            "filters": {"min_sharpness": 1.0},
            "shards": {"target_bytes": 40_000},
        },
        "run": {"progress": False, "episodes_per_task": 1, "report": False},
    }


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every shard, the manifest and the ledger."""
    files = [*sorted((out / "data").glob("shard-*.parquet")), out / MANIFEST_PATH, out / LEDGER_PATH]
    return {str(p.relative_to(out)): file_sha256(p) for p in files}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster-src")
    episodes = make_episodes([40] * (EPISODES - 1) + [SHORT], size=32)
    return write_lerobot_v3(episodes, root / "lerobot", codec="h264")


@pytest.fixture
def no_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def single_node_run(source: Path, out: Path) -> None:
    import ray

    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(job_from_dict(job_dict(source, out)))
    finally:
        ray.shutdown()


def busy_workers(node) -> list[psutil.Process]:
    """The worker processes of ``node`` (children of its raylet) that are running a task."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    busy = []
    for proc in raylet.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                busy.append(proc)
    return busy


def sigkill_node(node) -> int:
    """SIGKILL the node's raylet and every process under it; returns how many were killed."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    victims = [raylet, *raylet.children(recursive=True)]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    return len(victims)


def test_worker_node_killed_mid_job_gives_the_single_node_shards(source, tmp_path, no_auth):
    import ray
    from ray.cluster_utils import Cluster

    single = tmp_path / "single"
    single_node_run(source, single)

    temp = f"/tmp/gwpcl{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "temp_dir": temp,
            "include_dashboard": False,
            # the GCS marks a silent node dead after 3 missed checks of 0.5 s (default: 5 of 3 s),
            # so the lost tasks are retried within the test's time
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"curate_worker": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        out = tmp_path / "cluster"
        result: dict = {}

        def drive() -> None:
            try:
                result["manifest"] = run(job_from_dict(job_dict(source, out)))
            except BaseException as err:  # reported by the assertion below, not lost in the thread
                result["error"] = err

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        parts = out / ".work" / "parts"
        deadline = time.time() + 120
        victim, busy = None, {}
        # once a part is written, the first moment a worker node is running a task (between
        # two tasks both may be idle for an instant)
        while time.time() < deadline and driver.is_alive():
            if any(parts.glob("part-*.parquet")):
                busy = {id(n): busy_workers(n) for n in workers}
                victim = max(workers, key=lambda n: len(busy[id(n)]))
                if busy[id(victim)]:
                    break
            time.sleep(0.05)
        assert victim is not None, f"no work part appeared ({result.get('error')!r})"
        parts_at_kill = len(list(parts.glob("part-*.parquet")))
        had_task = bool(busy[id(victim)])
        killed = sigkill_node(victim)
        cluster.remove_node(victim, allow_graceful=False)  # bookkeeping: its processes are dead
        driver.join(timeout=240)
        assert not driver.is_alive(), "the job did not finish within 240 s of the node's death"
        assert "error" not in result, f"the job failed after the node died: {result['error']!r}"

        m = result["manifest"]
        balanced = (
            m.counts["episodes_in"]
            == EPISODES
            == m.counts["episodes_with_samples"] + len([r for r in m.rejections if r.window < 0])
        )
        short_once = [r.reason for r in m.rejections if r.window < 0]
        same = output_hashes(out) == output_hashes(single)
        REC.add(
            "crash",
            "curation worker node SIGKILL (3-node Ray cluster)",
            f"head (0 CPUs) + 2 worker nodes of 1 CPU (`ray.cluster_utils.Cluster`); after {parts_at_kill} "
            f"of {EPISODES} work parts, a worker node's raylet and its {killed - 1} workers SIGKILLed "
            f"(a task was running there: {had_task})",
            "the job finishes through Ray's retries; shards, manifest and ledger identical to a "
            "single-node run; every episode counted once",
            f"finished: True; counts balance ({m.counts['episodes_in']} in = "
            f"{m.counts['episodes_with_samples']} with samples + {len(short_once)} rejected: {short_once}); "
            f"shards + manifest + ledger byte-identical: {same}",
            balanced and same and short_once == ["too_short"] and had_task,
        )
        assert had_task, "the killed node was running no task: the kill proved nothing"
        assert balanced and short_once == ["too_short"], (m.counts, short_once)
        assert same, (output_hashes(out), output_hashes(single))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
