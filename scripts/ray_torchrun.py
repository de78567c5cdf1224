"""Run a training driver as N nodes × M processes on a Ray cluster (the KubeRay RayJob entrypoint).

Ray only places the work; the training itself is the same torchrun job as on Slurm:

1. a placement group of N bundles, one per node (``STRICT_SPREAD``), each asking for M GPUs (or
   ``--cpus-per-node`` CPUs on a CPU cluster), reserves the nodes;
2. a probe task in bundle 0 reports that node's IP: the c10d rendezvous endpoint;
3. one task per bundle runs ``python -m torch.distributed.run --nnodes N --nproc-per-node M
   --rdzv-backend c10d --rdzv-endpoint IP:PORT -m pipelines.<driver> <flags>`` in the project folder
   (the same path on every node: the container image's, or the job's working_dir); bundle 0's
   agent serves the rendezvous store (``--rdzv-conf is_host=1``), the others connect to it;
4. the job's exit status is the first non-zero one among the nodes (0 when all succeed).

    python scripts/ray_torchrun.py --nodes 2 --procs-per-node 8 pretrain -- --preset small \\
        --data owner/dataset --stream --out /shared/runs/small

``--out`` must be on storage every node sees. ``--strategy SPREAD`` lets bundles share a node (a
one-machine Ray, as in the tests). ``RAY_ADDRESS`` (set by ``ray job submit`` and inside a RayJob)
picks the cluster; without it a local Ray is started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def node_command(args: argparse.Namespace, endpoint: str, is_host: bool, flags: list[str]) -> list[str]:
    # who serves the rendezvous store is said outright: torchrun's own guess compares the endpoint
    # with the machine's host names, which a pod's IP (or one machine playing several nodes) defeats
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(args.nodes), "--nproc-per-node", str(args.procs_per_node),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", args.rdzv_id,
        "--rdzv-conf", f"is_host={int(is_host)}",
        "-m", f"pipelines.{args.driver}", *flags,
    ]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray_torchrun.py", description=__doc__.splitlines()[0])
    p.add_argument("driver", choices=("pretrain", "finetune"))
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--procs-per-node", type=int, default=1)
    p.add_argument("--gpus-per-proc", type=float, default=None, help="default: 1 when the cluster has GPUs")
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--strategy", default="STRICT_SPREAD", choices=("STRICT_SPREAD", "SPREAD", "PACK"))
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    p.add_argument("--rdzv-id", default="gwp-ray")
    p.add_argument("--local-cpus", type=int, default=None, help="CPUs of a local Ray (no RAY_ADDRESS)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(ours)
    if args.nodes < 1 or args.procs_per_node < 1:
        print("ray_torchrun.py: error: --nodes and --procs-per-node must be ≥ 1", file=sys.stderr)
        return 2

    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(
            address="local", num_cpus=args.local_cpus, include_dashboard=False
        )  # own Ray, not a cluster of this host
    gpus = args.gpus_per_proc
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    bundle = {"CPU": args.cpus_per_node, **({"GPU": gpus * args.procs_per_node} if gpus else {})}
    pg = placement_group([dict(bundle) for _ in range(args.nodes)], strategy=args.strategy)
    ray.get(pg.ready())

    def on(i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

    @ray.remote(num_cpus=0)
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    @ray.remote
    def run_node(cmd: list[str], cwd: str, env: dict[str, str]) -> int:
        # the agent inherits stdout/stderr: Ray forwards them to the job's log
        return subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, check=False).returncode

    endpoint = f"{ray.get(node_ip.options(scheduling_strategy=on(0)).remote())}:{args.port}"
    cwd = os.getcwd()
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", cwd)}
    for name in ("OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR", "HF_ENDPOINT", "HF_TOKEN", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    codes = ray.get(
        [
            run_node.options(
                scheduling_strategy=on(i), num_cpus=args.cpus_per_node, num_gpus=bundle.get("GPU", 0)
            ).remote(node_command(args, endpoint, i == 0, flags), cwd, env)
            for i in range(args.nodes)
        ]
    )
    ray.shutdown()
    failed = [c for c in codes if c != 0]
    if failed:
        print(f"ray_torchrun.py: node exit codes {codes}", file=sys.stderr)
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
