"""Multi-node training simulated on one host: 2 "nodes" × 1 process equals 1 node × 2 processes.

Each "node" is its own launcher process, as on a cluster: ``torchrun --nnodes 2 --node-rank i``
meeting through the c10d rendezvous, and ``deepspeed --hostfile … --no_ssh --node_rank i`` (the
hostfile path, without the ssh that its pdsh runner needs). Both run ``pipelines.pretrain`` (debug
model, ZeRO-2 over gloo) into one shared output folder, as nodes on shared storage do; the losses
must equal a ``torchrun --nnodes 1 --nproc-per-node 2`` run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.in_memory import curate_in_memory
from pretrain import distributed as dd
from tests.support.helpers import make_episodes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAIN = ["--preset", "debug", "--zero-stage", "2", "--threads", "1", "--steps", "4", "--batch-size", "2"]
TRAIN += ["--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return curate_in_memory(make_episodes((24, 30, 20), size=64), tmp_path_factory.mktemp("mn") / "shards")


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
    }


def _run_nodes(cmds: list[list[str]], timeout: float = 420) -> None:
    """Start every node's launcher at once (they wait for each other) and require all to succeed."""
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]


def _losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _world(out: Path) -> int:
    return json.loads((out / "run_config.json").read_text())["world_size"]


def test_two_nodes_of_one_process_equal_one_node_of_two(shards, tmp_path):
    data = ["--data", str(shards)]
    one = tmp_path / "one_node"
    _run_nodes([[str(BIN / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2", "--master-port",
                 str(dd.free_port()), "-m", "pipelines.pretrain", *TRAIN, *data, "--out", str(one)]])  # fmt: skip

    two = tmp_path / "torchrun_2x1"
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "gwp-test",
            "--rdzv-endpoint", f"localhost:{dd.free_port()}"]  # fmt: skip
    node = [str(BIN / "torchrun"), *rdzv, "-m", "pipelines.pretrain", *TRAIN, *data, "--out", str(two)]
    _run_nodes([[*node[:1], "--node-rank", str(i), *node[1:]] for i in (0, 1)])

    ds = tmp_path / "deepspeed_2x1"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")  # two "nodes" of one process each
    launcher = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--master_addr", "127.0.0.1",
                "--master_port", str(dd.free_port())]  # fmt: skip
    _run_nodes(
        [
            [
                *launcher,
                "--node_rank",
                str(node),
                "--module",
                "pipelines.pretrain",
                *TRAIN,
                *data,
                "--out",
                str(ds),
            ]
            for node in (0, 1)
        ]
    )

    ref = _losses(one)
    assert len(ref) == 4 and _world(one) == _world(two) == _world(ds) == 2
    for got in (_losses(two), _losses(ds)):
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-7)
    assert (two / "final" / "model.safetensors").is_file() and (ds / "final" / "model.safetensors").is_file()
