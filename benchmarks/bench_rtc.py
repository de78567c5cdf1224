"""Real-time chunking in closed loop: sync vs naive async vs RTC under a simulated inference delay.

    python -m benchmarks.bench_rtc --policy runs/demo16/policy/final --tasks drawer-open-v3 \\
        --delays 0,2,4,8 --episodes 10 [--horizon 8] [--server ws://host:port] [--out rtc.json]

(``runs/demo16``: ``gwp demo --chunk 16``; the default demo's P = 8 leaves the async modes no
horizon at d = 8.) Cells run in ``--delays`` order (the largest first keeps the most telling
rows when a long run is cut short); the final table is ordered by delay.

For every delay d (control steps one inference takes; the environment advances meanwhile) and
every mode of :mod:`policy.execution` (``sync``: hold still while thinking; ``naive``: keep
running the old chunk, then switch; ``rtc``: the same with the new chunk guided to continue the
old one), the same seeded Meta-World episodes run through :func:`policy.evaluate.evaluate` and
give success (Wilson 95 % interval) and the boundary discontinuity: mean ‖a_t − a_{t−1}‖ at
chunk switches vs elsewhere (robot units). The execution horizon s is ``--horizon`` capped at
``P − d``, the same for the three modes of a delay; a delay with no valid horizon for the async
modes (``d > P − d``: the old chunk ends before the new one arrives) is reported as n/a for them
(sync then runs with ``min(--horizon, P)``). Every cell reuses one env pool; the
query seeds depend only on (task, env seed, step), so modes differ only in execution.

At the end it prints the section's heading paragraph and table as BENCHMARKS.md has them: the
command as typed, the commit (``+`` when the work tree had changes), the machine (host, cores,
the 1-minute load average's range over the cells), the policy and its chunk P, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

from benchmarks.provenance import command, git_commit, machine

MODES = ("sync", "naive", "rtc")


def horizon_for(chunk: int, delay: int, horizon: int) -> int | None:
    """``min(horizon, P − d)``, or None when the async modes cannot run (it would be < d)."""
    s = min(horizon, chunk - delay)
    return s if s >= max(delay, 1) else None


def run_table(
    policy: Any,
    chunk: int,
    args: argparse.Namespace,
    progress: bool = False,
    loads: list[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per (delay, mode); ``loads`` gets the 1-minute load average before each cell and at the end."""
    from policy.eval_workers import EnvWorkers
    from policy.evaluate import EvalConfig, evaluate
    from policy.execution import ExecutionConfig

    tasks = tuple(t for t in args.tasks.split(",") if t)
    rows = []
    with EnvWorkers(args.workers, tasks, args.image_size, args.max_steps, sheet_frames=2) as pool:
        for d in args.delays:
            s = horizon_for(chunk, d, args.horizon)
            for mode in MODES:
                if loads is not None:
                    loads.append(os.getloadavg()[0])
                # one horizon for every mode of a delay; sync alone where async cannot run
                s_mode = s if s is not None else (min(args.horizon, chunk) if mode == "sync" else None)
                if s_mode is None:
                    rows.append({"delay": d, "mode": mode, "horizon": None})
                    print(_row_md(rows[-1]), flush=True)
                    continue
                ex = ExecutionConfig(
                    mode=mode,
                    horizon=s_mode,
                    delay=d,
                    schedule=args.schedule,
                    max_guidance_weight=args.max_guidance_weight,
                )
                cfg = EvalConfig(
                    tasks=tasks,
                    episodes=args.episodes,
                    seed=args.seed,
                    replan_every=s_mode,
                    max_steps=args.max_steps,
                    image_size=args.image_size,
                    workers=args.workers,
                    videos_per_task=0,
                    sheet_frames=2,
                    execution=ex,
                )
                r = evaluate(policy, cfg, name=f"{mode}-d{d}", workers=pool, progress=progress)
                rows.append(
                    {
                        "delay": d,
                        "mode": mode,
                        "horizon": s_mode,
                        "episodes": len(r.episodes),
                        "successes": r.successes,
                        "success_rate": r.success_rate,
                        "ci95": list(r.ci95),
                        "mean_length": float(sum(e.length for e in r.episodes) / len(r.episodes)),
                        **(r.boundary or {}),
                        "latency_p50_ms": r.latency_ms["p50"],
                    }
                )
                print(_row_md(rows[-1]), flush=True)
    if loads is not None:
        loads.append(os.getloadavg()[0])
    return rows


def _row_md(r: dict[str, Any]) -> str:
    if r["horizon"] is None:
        return f"| {r['delay']} | {r['mode']} | n/a | n/a | n/a | n/a | n/a |"
    lo, hi = r["ci95"]
    return (
        f"| {r['delay']} | {r['mode']} | {r['horizon']} | {r['successes']}/{r['episodes']} "
        f"({100 * r['success_rate']:.0f} %, CI {100 * lo:.0f}–{100 * hi:.0f} %) | {r['switch_mean']:.3f} "
        f"| {r['elsewhere_mean']:.3f} | {r['mean_length']:.0f} |"
    )


HEADER = (
    "| delay d | mode | horizon s | success (95 % CI) | ‖Δa‖ at switches | ‖Δa‖ elsewhere | mean length |\n"
    "|---|---|---|---|---|---|---|"
)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table, by delay then mode, whatever order ``--delays`` ran them in."""
    ordered = sorted(rows, key=lambda r: (r["delay"], MODES.index(r["mode"])))
    return "\n".join([HEADER, *(_row_md(r) for r in ordered)])


def section(argv: list[str], args: argparse.Namespace, chunk: int, rows: list[dict[str, Any]],
            loads: list[float], seconds: float) -> str:  # fmt: skip
    """BENCHMARKS.md's paragraph above the table, then the table: what ran, where, on what."""
    tasks = [t for t in args.tasks.split(",") if t]
    horizons = sorted({r["horizon"] for r in rows if r["horizon"] is not None})
    where = args.policy or args.server
    return "\n".join(
        [
            f"`{command('benchmarks.bench_rtc', argv)}` (commit `{git_commit()}`, {machine()}, "
            f"1-minute load average {min(loads):.1f}–{max(loads):.1f} over the cells, {seconds / 60:.0f} min) "
            f"— policy `{where}`, chunk P = {chunk}, execution horizon s = "
            f"{', '.join(map(str, horizons)) or 'n/a'}, **{args.episodes} episodes per task and cell, "
            f"{args.episodes * len(tasks)} per cell** ({', '.join(tasks)}), the same seeded episodes in every "
            f"cell; guidance `{args.schedule}`, β = {args.max_guidance_weight:g}, at most {args.max_steps} "
            f"steps, {args.image_size}² images.",
            "",
            markdown(rows),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--policy", help="a saved policy folder or Hub repo id (evaluated in process)")
    where.add_argument("--server", help="ws://host:port of a running `gwp serve`")
    p.add_argument("--tasks", default="drawer-open-v3")
    p.add_argument("--delays", default="0,2,4,8", type=lambda v: [int(x) for x in v.split(",") if x])
    p.add_argument("--episodes", type=int, default=10, help="per task and cell")
    p.add_argument("--horizon", type=int, default=8, help="execution horizon s (capped at P − d)")
    p.add_argument("--schedule", default="exp", choices=["exp", "linear", "ones"])
    p.add_argument("--max-guidance-weight", type=float, default=5.0)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    git_commit()  # now, before a long run: a commit made meanwhile is not what ran
    if args.server:
        from policy.client import PolicyClient

        policy: Any = PolicyClient(args.server)
        chunk = int(policy.chunk)
    else:
        import torch

        from policy.api import Policy

        torch.set_num_threads(args.threads)
        policy = Policy.from_pretrained(args.policy)
        chunk = policy.model.cfg.model.chunk
    print(f"chunk P = {chunk}; {args.episodes} episode(s) per task and cell; tasks {args.tasks}")
    print(HEADER, flush=True)
    loads: list[float] = []
    start = time.time()
    rows = run_table(policy, chunk, args, loads=loads)
    seconds = time.time() - start
    print("\n" + section(sys.argv[1:] if argv is None else argv, args, chunk, rows, loads, seconds))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"chunk": chunk, "args": vars(args), "commit": git_commit(), "host": platform.node(),
                 "loads": loads, "seconds": seconds, "rows": rows},
                f,
                indent=1,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
