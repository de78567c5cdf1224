"""What a closed-loop evaluation measures, and how the per-episode records are summarised.

Design: the rollout loop (:mod:`policy.evaluate`) collects one :class:`EpisodeResult` per
episode, one :class:`SheetRow` per recorded episode and the wall time of every policy call;
:func:`summarise` turns them into one :class:`EvalResult`, ordered by task then episode
index so the result does not depend on which worker finished first.

* **Success** per task and overall, with a Wilson 95 % interval (:func:`wilson_interval`),
  which stays inside [0, 1] and is honest at the small episode counts evaluations use.
* **Latency** = wall time of each policy call (``perf_counter`` around the call only):
  p50, p95, mean, max in ms; episode lengths (all, and successful ones).
* **Throughput**: episodes/s and env steps/s of the rollout phase, with the pool's start-up
  (process spawn, imports, simulator builds) reported apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from policy.envs import TASK_INSTRUCTIONS

if TYPE_CHECKING:
    from policy.evaluate import EvalConfig


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for the default ``z``)."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    index: int
    env_seed: int
    success: bool
    length: int  # env steps taken
    queries: int  # policy calls
    final_state: tuple[float, ...]  # [Ds] state after the last step (a fingerprint of the trajectory)
    video: str | None = None


@dataclass(frozen=True)
class SheetRow:
    """Frames sampled across one recorded rollout, for the contact sheet."""

    task: str
    env_seed: int
    success: bool
    length: int
    steps: tuple[int, ...]  # env step of each frame
    frames_NHWC: np.ndarray  # [N, H, R·W, 3] uint8, camera roles side by side


@dataclass(frozen=True)
class TaskSummary:
    task: str
    instruction: str
    episodes: int
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    mean_length: float
    mean_success_length: float | None
    videos: tuple[str, ...]


@dataclass
class EvalResult:
    policy: str
    config: EvalConfig
    tasks: dict[str, TaskSummary]
    episodes: list[EpisodeResult]
    successes: int
    success_rate: float
    ci95: tuple[float, float]
    latency_ms: dict[str, float]  # p50, p95, mean, max over policy calls
    policy_calls: int
    chunks: int  # observations answered (calls × batch size)
    wall_s: float  # rollout phase
    startup_s: float  # the pool's worker spawn + simulator builds (paid once when shared)
    episodes_per_s: float
    env_steps_per_s: float
    sheet: list[SheetRow] = field(default_factory=list)
    # with an execution mode (policy.execution): mean ‖a_t − a_{t−1}‖ at chunk switches and elsewhere
    boundary: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (everything but the contact-sheet pixels)."""
        out = {k: v for k, v in asdict(self).items() if k != "sheet"}
        out["config"]["tasks"] = list(self.config.tasks)
        return out


def summarise(
    policy_name: str,
    cfg: EvalConfig,
    results: list[EpisodeResult],
    sheet: list[SheetRow],
    latencies: list[float],
    chunks: int,
    wall: float,
    startup: float,
) -> EvalResult:
    order = {t: i for i, t in enumerate(cfg.tasks)}
    results = sorted(results, key=lambda r: (order[r.task], r.index))
    sheet = sorted(sheet, key=lambda r: (order[r.task], r.env_seed))
    tasks: dict[str, TaskSummary] = {}
    for task in cfg.tasks:
        rs = [r for r in results if r.task == task]
        k = sum(r.success for r in rs)
        ok_lengths = [r.length for r in rs if r.success]
        tasks[task] = TaskSummary(
            task=task,
            instruction=TASK_INSTRUCTIONS[task],
            episodes=len(rs),
            successes=k,
            success_rate=k / len(rs),
            ci95=wilson_interval(k, len(rs)),
            mean_length=float(np.mean([r.length for r in rs])),
            mean_success_length=float(np.mean(ok_lengths)) if ok_lengths else None,
            videos=tuple(r.video for r in rs if r.video),
        )
    k = sum(r.success for r in results)
    lat_ms = np.asarray(latencies) * 1e3
    latency = (
        {
            "p50": float(np.percentile(lat_ms, 50)),
            "p95": float(np.percentile(lat_ms, 95)),
            "mean": float(lat_ms.mean()),
            "max": float(lat_ms.max()),
        }
        if len(lat_ms)
        else {"p50": 0.0, "p95": 0.0, "mean": 0.0, "max": 0.0}
    )
    steps = sum(r.length for r in results)
    return EvalResult(
        policy=policy_name,
        config=cfg,
        tasks=tasks,
        episodes=results,
        successes=k,
        success_rate=k / len(results),
        ci95=wilson_interval(k, len(results)),
        latency_ms=latency,
        policy_calls=len(latencies),
        chunks=chunks,
        wall_s=wall,
        startup_s=startup,
        episodes_per_s=len(results) / wall,
        env_steps_per_s=steps / wall,
        sheet=sheet,
    )
