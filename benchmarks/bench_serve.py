"""Overhead of ``gwp serve``: what the network path adds to an inference, and requests per second.

    python -m benchmarks.bench_serve [--policy runs/demo/policy/export] [--requests 200] [--image-size 64]

The server is the real command (``gwp serve --port 0``) in a subprocess; the clients are
:class:`policy.client.PolicyClient` in this process, on loopback. Each request is an openpi-style
observation of the demo's shape (two ``--image-size``² uint8 cameras, the Sawyer state, a prompt).

* **Overhead per request** = client round trip − the inference itself for that request
  (``policy_timing.infer_ms``: ``Policy.predict_action`` timed inside the server's inference
  thread). What is left is msgpack encoding and decoding on both sides, the websocket frames, the
  loopback hop and the event loop's hand-off to the inference thread and back. p50 / p95 over ``--requests``
  after warm-up, one client.
* **In-process inference** of the same observation (``Policy.predict_action`` in this process)
  for reference: the round trip's other part.
* **Requests/s** with 1 and 4 clients at once (each with its own connection, back to back). One
  inference runs at a time by design, so 4 clients share the inference thread: the figure shows
  the server keeps it busy rather than adding per-client cost.

Without ``--policy`` a random-weight ``debug`` policy (the demo's model preset, chunk 8) at the demo's
image size is saved to a temporary folder and served: the overhead does not depend on the weights.

It prints BENCHMARKS.md's paragraph (command, commit, machine, the 1-minute load average before
and after: the overhead on a shared machine is mostly waiting for a CPU) and table; ``--out``
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import command, git_commit, machine

ROOT = Path(__file__).resolve().parents[1]


def tiny_policy(folder: Path, image_size: int) -> Path:
    import torch

    from policy.model import GWPPolicyModel, ImageConfig, PolicyConfig
    from pretrain.config import get_model_config
    from schemas import DimStats, EmbodimentStats, get_embodiment

    torch.manual_seed(0)
    spec = get_embodiment("metaworld_sawyer")
    image = ImageConfig(width=image_size, height=image_size)
    cfg = PolicyConfig(
        model=dataclasses.replace(get_model_config("debug"), chunk=8), embodiments=(spec,), image=image
    )
    model = GWPPolicyModel(cfg)

    def dims(n: int) -> DimStats:
        z, o = (0.0,) * n, (1.0,) * n
        return DimStats(z, o, tuple(-2.0 for _ in range(n)), tuple(2.0 for _ in range(n)), z, o, 100)

    model.norm_stats = {spec.name: EmbodimentStats(spec.name, dims(spec.action_dim), dims(spec.state_dim))}
    return Path(model.save_pretrained(folder / "policy"))


def observation(cameras: list[str], state_dim: int, size: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {
        f"observation/{r}": rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for r in cameras
    }
    obs["observation/state"] = rng.normal(size=state_dim).astype(np.float32)
    obs["prompt"] = "open the drawer"
    return obs


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def start_server(policy: Path, threads: int) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--policy", str(policy), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--threads", str(threads), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if "ws://" not in line:
        proc.kill()
        raise RuntimeError(f"gwp serve did not start: {line!r}")
    return proc, int(line.split("ws://")[1].split()[0].rsplit(":", 1)[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from policy.api import Policy
    from policy.client import PolicyClient

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gwp-bench-serve-") as tmp:
        folder = Path(args.policy) if args.policy else tiny_policy(Path(tmp), args.image_size)
        local = Policy.from_pretrained(folder)
        spec = local.model.cfg.embodiments[0]
        obs = observation(list(spec.cameras), spec.state_dim, args.image_size)
        proc, port = start_server(folder, args.threads)
        try:
            url = f"ws://127.0.0.1:{port}"
            rtt, infer = [], []
            with PolicyClient(url) as client:
                for i in range(args.warmup + args.requests):
                    t0 = time.perf_counter()
                    out = client.infer(obs)
                    dt = (time.perf_counter() - t0) * 1e3
                    if i >= args.warmup:
                        rtt.append(dt)
                        infer.append(out["policy_timing"]["infer_ms"])
            overhead = [r - s for r, s in zip(rtt, infer, strict=True)]
            rates = {n: requests_per_s(url, obs, n, args.rate_requests) for n in (1, 4)}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        nested = {
            "images": {r: obs[f"observation/{r}"] for r in spec.cameras},
            "state": obs["observation/state"],
            "instruction": obs["prompt"],
        }
        local_ms = []
        for i in range(args.warmup + args.requests // 2):
            t0 = time.perf_counter()
            local.predict_action(nested)
            if i >= args.warmup:
                local_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "policy": str(args.policy or f"debug (random weights), {args.image_size}² cameras"),
        "request_bytes": sum(v.nbytes for k, v in obs.items() if isinstance(v, np.ndarray)),
        "rtt_ms": {"p50": pct(rtt, 50), "p95": pct(rtt, 95)},
        "server_infer_ms": {"p50": pct(infer, 50), "p95": pct(infer, 95)},
        "overhead_ms": {"p50": pct(overhead, 50), "p95": pct(overhead, 95)},
        "local_predict_ms": {"p50": pct(local_ms, 50), "p95": pct(local_ms, 95)},
        "requests_per_s": rates,
    }


def requests_per_s(url: str, obs: dict[str, Any], clients: int, each: int) -> float:
    from policy.client import PolicyClient

    conns = [PolicyClient(url) for _ in range(clients)]
    for c in conns:
        c.infer(obs)  # warm
    barrier = threading.Barrier(clients + 1)

    def work(c: PolicyClient) -> None:
        barrier.wait()
        for _ in range(each):
            c.infer(obs)

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return clients * each / wall


def section(argv: list[str], args: argparse.Namespace, r: dict[str, Any], loads: list[float]) -> str:
    """BENCHMARKS.md's paragraph above the table, then the table."""
    ms = lambda d: f"{d['p50']:.2f} / {d['p95']:.2f} ms"  # noqa: E731
    return "\n".join(
        [
            f"`{command('benchmarks.bench_serve', argv)}` (commit `{git_commit()}`, {machine()}, 1-minute "
            f"load average {min(loads):.1f}–{max(loads):.1f}) — policy: {r['policy']}; openpi-style requests "
            f"of {r['request_bytes']} bytes of arrays, {args.threads} torch thread(s), {args.requests} "
            f"requests after {args.warmup} warm-up, requests/s over {args.rate_requests} back-to-back "
            "requests per client.",
            "",
            "| round trip p50 / p95 | inference inside the server p50 / p95 | **overhead p50 / p95** "
            "| in-process `predict_action` p50 | req/s, 1 client | req/s, 4 clients |",
            "|---|---|---|---|---|---|",
            f"| {ms(r['rtt_ms'])} | {ms(r['server_infer_ms'])} | **{ms(r['overhead_ms'])}** | "
            f"{r['local_predict_ms']['p50']:.2f} ms | {r['requests_per_s'][1]:.1f} | {r['requests_per_s'][4]:.1f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default=None, help="a saved policy folder (default: a random debug policy)")
    p.add_argument("--image-size", type=int, default=64, help="square camera images (the demo's: 64)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rate-requests", type=int, default=50, help="requests per client for requests/s")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    git_commit()  # now, before a long run: a commit made meanwhile is not what ran
    loads = [os.getloadavg()[0]]
    r = run(args)
    loads.append(os.getloadavg()[0])
    print(section(sys.argv[1:] if argv is None else argv, args, r, loads))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**r, "args": vars(args), "commit": git_commit(), "loads": loads}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
