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


def build_ray_parser():
    """The parser of scripts/ray_torchrun.py (a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ray_torchrun", ROOT / "scripts" / "ray_torchrun.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser()


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


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> list[float]:
    """Losses of 1 node × 2 processes (``torchrun --nnodes 1 --nproc-per-node 2``)."""
    one = tmp_path_factory.mktemp("one_node")
    _run_nodes([[str(BIN / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2", "--master-port",
                 str(dd.free_port()), "-m", "pipelines.pretrain", *TRAIN, "--data", str(shards), "--out", str(one)]])  # fmt: skip
    assert _world(one) == 2
    return _losses(one)


def test_two_nodes_of_one_process_equal_one_node_of_two(shards, reference, tmp_path):
    data = ["--data", str(shards)]
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

    assert len(reference) == 4 and _world(two) == _world(ds) == 2
    for got in (_losses(two), _losses(ds)):
        assert got == pytest.approx(reference, rel=1e-6, abs=1e-7)
    assert (two / "final" / "model.safetensors").is_file() and (ds / "final" / "model.safetensors").is_file()


FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for Slurm's srun on one host: the task once per node, each with its SLURM_NODEID
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def test_slurm_recipe_on_two_simulated_nodes(shards, reference, tmp_path):
    """scripts/launch_slurm.sh as sbatch would run it, with srun/scontrol stand-ins on one host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = tmp_path / "slurm"
    env = {**_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PY": sys.executable, "GPUS_PER_NODE": "1",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7",
           "PORT": str(dd.free_port()), "SLURM_SUBMIT_DIR": str(ROOT)}  # fmt: skip
    cmd = [
        str(ROOT / "scripts" / "launch_slurm.sh"),
        "pretrain",
        *TRAIN,
        "--data",
        str(shards),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert _world(out) == 2 and _losses(out) == pytest.approx(reference, rel=1e-6, abs=1e-7)
    bad = subprocess.run([str(ROOT / "scripts" / "launch_slurm.sh"), "train"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "unknown driver 'train'" in bad.stderr


def test_ray_recipe_on_a_local_ray(shards, reference, tmp_path):
    """scripts/ray_torchrun.py (the KubeRay entrypoint): two bundles on a one-machine Ray."""
    out = tmp_path / "ray"
    cmd = [sys.executable, str(ROOT / "scripts" / "ray_torchrun.py"), "pretrain", "--nodes", "2",
           "--strategy", "SPREAD", "--local-cpus", "2", "--port", str(dd.free_port()), "--",
           *TRAIN, "--data", str(shards), "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in _env().items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=ROOT, env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=420)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert _world(out) == 2 and _losses(out) == pytest.approx(reference, rel=1e-6, abs=1e-7)


def test_kuberay_recipe_writes_a_rayjob_for_the_ray_entrypoint(tmp_path):
    import yaml

    env = {
        **os.environ,
        "IMAGE": "registry.example/gwp:1",
        "NODES": "3",
        "GPUS_PER_NODE": "8",
        "DRY_RUN": "1",
    }
    cmd = [str(ROOT / "scripts" / "launch_kuberay.sh"), "finetune", "--preset", "debug", "--data",
           "hf://datasets/me/set", "--out", "/shared/runs/p"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[1:4] == ["scripts/ray_torchrun.py", "finetune", "--nodes"] and entry[4] == "3"
    assert entry[entry.index("--") + 1 :] == cmd[2:]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 3
    pod = workers["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "gwp-shared"
    args = build_ray_parser().parse_args(entry[2 : entry.index("--")])
    assert (args.nodes, args.procs_per_node) == (3, 8)
