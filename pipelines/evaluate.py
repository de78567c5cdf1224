"""Closed-loop evaluation of one or several policies in simulation, with reports.

    python -m pipelines.evaluate --policy runs/gwp --policy expert --policy random \\
        --env metaworld --tasks drawer-open-v3,push-v3 --episodes 20 --seed 0 \\
        --replan-every 8 --workers 2 --out reports/eval
    gwp evaluate --server ws://gpu-box:8000 --execution rtc --delay 4 --replan-every 4 --out reports/rtc

Top to bottom:

1. parse the policy specs ``[label=]<expert | random | local folder | Hub repo id>``; trained
   policies load through ``policy.Policy.from_pretrained``, imported only when one is asked for;
   ``--server ws://host:port`` evaluates a policy served by ``gwp serve`` through
   :class:`policy.client.PolicyClient`, exactly as the same policy would be evaluated locally
   (each query's seed travels with it). ``--compile`` compiles trained policies' action-only
   steps (``Policy(compile=True)``). ``--execution sync|naive|rtc --delay d`` runs the
   episodes with a simulated inference delay (:mod:`policy.execution`);
2. start one pool of env workers (:class:`policy.eval_workers.EnvWorkers`) shared by every policy,
   so all of them see the same seeded episodes;
3. evaluate each policy in turn (:func:`policy.evaluate.evaluate`): success per task with a
   Wilson 95 % interval, latency per policy call, episode lengths, episodes/s, videos of the
   first ``--videos-per-task`` episodes;
4. write ``<out>/<label>/{results.json, report.md, report.html, contact_sheet.png, videos/}``
   and, with several policies, ``<out>/comparison.{md,json}``.

Exit status: 0 done; 1 a policy could not be loaded or a rollout failed; 2 a mistake in the
arguments (an unknown task, a policy folder that does not exist).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from pipelines.usage import ArgumentParser, JobFailed, UsageError, command, local_or_repo_id

ENVS = ("metaworld",)
BASELINES = ("expert", "random")
DEFAULT_TASKS = ("drawer-open-v3", "push-v3")


class PolicyLoadError(RuntimeError):
    pass


def parse_policy_spec(spec: str) -> tuple[str | None, str]:
    """``"label=target"`` -> (label, target); a bare target has no label."""
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)=(.+)", spec)
    if m and "/" not in m.group(1):
        return m.group(1), m.group(2)
    return None, spec


def load_policy(target: str, random_chunk: int = 8, seed: int = 0, compile: bool = False) -> Any:
    """A baseline by name, or a trained policy from a local folder or Hub repo id (``compile``:
    its action-only steps under ``torch.compile``)."""
    from policy.baselines import ExpertPolicy, RandomPolicy

    if target == "expert":
        return ExpertPolicy()
    if target == "random":
        return RandomPolicy(chunk_size=random_chunk, seed=seed)
    if target.startswith(("ws://", "wss://")):
        from policy.client import PolicyClient

        try:
            return PolicyClient(target)
        except (ConnectionError, OSError) as err:
            raise PolicyLoadError(str(err)) from err
    try:
        import policy as policy_pkg

        policy_cls = policy_pkg.Policy
    except (ImportError, AttributeError) as err:
        raise PolicyLoadError(
            f"cannot load {target!r}: policy.Policy is not available in this checkout ({err}); the GWP policy "
            f"class is needed to evaluate a trained model. The baselines run without it: --policy expert, --policy random"
        ) from None
    try:
        return policy_cls.from_pretrained(target, **({"compile": True} if compile else {}))
    except Exception as err:  # a missing folder, a bad repo id, a config mismatch: say which policy
        raise PolicyLoadError(f"cannot load policy {target!r}: {type(err).__name__}: {err}") from err


def _check_execution(name: str, pol: Any, execution: Any) -> None:
    """The execution mode fits the policy (chunk length, guided sampling), before any rollout."""
    model = getattr(pol, "model", None)
    chunk = model.cfg.model.chunk if model is not None else getattr(pol, "chunk", None)
    if chunk is not None:
        try:
            execution.check_chunk(int(chunk))
        except ValueError as err:
            raise UsageError(f"policy {name}: {err}") from None
    if execution.mode == "rtc" and not callable(getattr(pol, "predict_action_guided", None)):
        raise UsageError(f"policy {name} cannot run --execution rtc: it has no guided sampling")


def _label(label: str | None, target: str, taken: set[str]) -> str:
    base = label or (target if target in BASELINES else Path(target.rstrip("/")).name or "policy")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="gwp evaluate", description="Closed-loop evaluation of policies in simulation, with reports."
    )
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        help="[label=]expert | random | local folder | Hub repo id | ws://host:port; repeat to compare several",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        help="[label=]ws://host:port of a `gwp serve`: evaluate the served policy (repeatable)",
    )
    p.add_argument(
        "--execution",
        default=None,
        choices=["sync", "naive", "rtc"],
        help="simulate inference time: sync (hold still), naive async (switch), rtc (real-time chunking)",
    )
    p.add_argument("--delay", type=int, default=0, help="inference delay in control steps (with --execution)")
    p.add_argument("--rtc-schedule", default="exp", choices=["exp", "linear", "ones"])
    p.add_argument("--max-guidance-weight", type=float, default=5.0, help="RTC's clip β on the guidance")
    p.add_argument("--env", default="metaworld", choices=ENVS)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated Meta-World v3 tasks")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed: env seeds 10^9 + seed·10^5 + i")
    p.add_argument(
        "--replan-every", type=int, default=8, help="actions run from each chunk before re-querying"
    )
    p.add_argument("--max-steps", type=int, default=500, help="env steps per episode (Meta-World allows 500)")
    p.add_argument(
        "--image-size", type=int, default=128, help="square camera images; match the training data"
    )
    p.add_argument("--workers", type=int, default=1, help="env processes (1 = inline)")
    p.add_argument("--videos-per-task", type=int, default=2, help="episodes recorded as mp4 per task")
    p.add_argument("--random-chunk", type=int, default=8, help="chunk length of the random baseline")
    p.add_argument("--out", required=True, help="output folder for reports")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for the policy (1: batch-1 inference is latency-bound, and on a machine "
        "with few cores more threads spin against the env workers and make each chunk far slower)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run trained policies' action-only Euler steps under torch.compile (compiles on the first chunk)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


@command("gwp evaluate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.policy and not args.server:
        raise UsageError("give at least one --policy or --server")
    for spec in args.server:
        if not parse_policy_spec(spec)[1].startswith(("ws://", "wss://")):
            raise UsageError(f"--server {spec}: expected ws://host:port")
    taken: set[str] = set()
    specs = [
        (lambda lt: (_label(lt[0], lt[1], taken), lt[1]))(parse_policy_spec(s))
        for s in args.policy + args.server
    ]
    for _, target in specs:
        if target not in BASELINES and not target.startswith(("ws://", "wss://")):
            local_or_repo_id("--policy", target)
    if args.execution is None and args.delay:
        raise UsageError("--delay needs --execution sync|naive|rtc")
    from policy.eval_workers import EnvWorkers
    from policy.evaluate import EvalConfig, evaluate
    from policy.execution import ExecutionConfig

    try:
        execution = None
        if args.execution is not None:
            execution = ExecutionConfig(
                mode=args.execution,
                horizon=args.replan_every,
                delay=args.delay,
                schedule=args.rtc_schedule,
                max_guidance_weight=args.max_guidance_weight,
            )
        cfg = EvalConfig(
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            episodes=args.episodes,
            seed=args.seed,
            replan_every=args.replan_every,
            max_steps=args.max_steps,
            image_size=args.image_size,
            workers=args.workers,
            videos_per_task=args.videos_per_task,
            execution=execution,
        )
        if args.random_chunk < 1:
            raise ValueError(f"--random-chunk must be >= 1, got {args.random_chunk}")
    except ValueError as err:
        raise UsageError(str(err)) from err
    from policy.eval_report import write_comparison, write_report  # the plotting stack: after the checks

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:  # load every policy before spending time on rollouts
        policies = [
            (name, load_policy(target, args.random_chunk, args.seed, args.compile)) for name, target in specs
        ]
    except PolicyLoadError as err:
        raise JobFailed(str(err)) from err
    if execution is not None:
        for name, pol in policies:
            _check_execution(name, pol, execution)
    out = Path(args.out)
    results = []
    try:
        with EnvWorkers.for_config(cfg) as pool:
            print(f"{cfg.workers} env worker(s) ready in {pool.startup_s:.1f} s")
            for name, pol in policies:
                result = evaluate(
                    pol,
                    cfg,
                    name=name,
                    video_dir=out / name / "videos",
                    workers=pool,
                    progress=not args.no_progress,
                )
                paths = write_report(result, out / name)
                results.append(result)
                lo, hi = result.ci95
                if result.boundary is not None:
                    b = result.boundary
                    print(
                        f"{name}: {args.execution} execution, delay {args.delay}: mean |Δa| at chunk switches "
                        f"{b['switch_mean']:.4f}, elsewhere {b['elsewhere_mean']:.4f} ({b['switches']} switches)"
                    )
                print(
                    f"{name}: success {100 * result.success_rate:.1f} % ({result.successes}/{len(result.episodes)}, "
                    f"95 % CI {100 * lo:.1f}–{100 * hi:.1f} %), latency p50 {result.latency_ms['p50']:.2f} ms "
                    f"p95 {result.latency_ms['p95']:.2f} ms, {result.episodes_per_s:.3f} episodes/s -> {paths['markdown']}"
                )
    except (RuntimeError, ValueError) as err:
        raise JobFailed(str(err)) from err
    if len(results) > 1:
        print(f"comparison -> {write_comparison(results, out)['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
