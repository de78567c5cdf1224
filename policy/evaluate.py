"""Closed-loop evaluation of a policy on Meta-World tasks: success rate, latency, rollouts.

Design:

* **Unseen, seeded episodes.** Episode ``i`` of a task runs with env seed
  ``EVAL_SEED_BASE + seed * EPISODE_STRIDE + i`` = 10^9 + s·10^5 + i. Training data
  (``pipelines.generate_sim``) uses seeds in ``[0, TRAIN_SEED_LIMIT)`` = [0, 10^6), so no
  evaluation goal was seen in training. Each seed draws a fresh goal (``policy.envs``), so an
  episode is fully determined by (task, env seed) and the policy.
* **Execution.** The policy answers an observation with a chunk ``[p, Da]`` in robot units;
  the first ``min(p, replan_every)`` actions run open loop, then the policy is queried again.
  An episode ends at the first ``info["success"]`` (a success, length = steps taken) or after
  ``max_steps`` env steps (a failure).
* **Processes.** The policy lives in the main process; ``W`` env workers
  (:class:`policy.eval_workers.EnvWorkers`: spawned processes, or inline for ``W = 1``) step
  and render. A torch policy is large and multithreaded, so one copy answering batched
  queries is cheaper than W copies, while rendering, the dominant per-step cost on CPU,
  parallelises across workers. The main loop waits for any worker, sends every observation
  that is waiting at that moment to the policy in one call (``predict_action_batch`` when the
  policy has it, otherwise one ``predict_action`` each), and sends the chunks back; a
  finished episode frees its worker for the next one.
* **Determinism.** Every query carries a seed derived from (task, env seed, step): it goes to
  ``predict_action_batch(observations, seeds)``, or to ``policy.reseed(seed)`` and numpy's and
  torch's global RNGs before ``predict_action``. Neither env seeds nor query seeds depend on
  which worker ran an episode or when, so results are identical for any ``W`` (tested).
* **Execution modes** (``EvalConfig.execution``, :mod:`policy.execution`): by default a chunk's
  first ``replan_every`` actions run and the env waits for the next chunk (inference is free).
  With an :class:`~policy.execution.ExecutionConfig` the inference takes ``delay`` control
  steps of env time: ``sync`` holds the robot still meanwhile, ``naive`` keeps running the old
  chunk and switches, ``rtc`` does the same with the new chunk guided to continue the old one
  (``predict_action_guided``). The result then carries the boundary discontinuity.
* **Measurements and recording.** Latency of each policy call, episode lengths and
  throughput are summarised by :mod:`policy.eval_metrics`; the first ``videos_per_task``
  episodes of each task are recorded by their worker (mp4 + contact-sheet frames).

The observation protocol and the optional policy hooks are described in
:mod:`policy.baselines`.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policy.envs import EMBODIMENT, TASK_INSTRUCTIONS, MetaWorldConfig
from policy.eval_metrics import EpisodeResult, EvalResult, SheetRow, summarise
from policy.eval_workers import EnvWorkers, EpisodeJob
from policy.execution import EpisodeExecution, ExecutionConfig

EVAL_SEED_BASE = 10**9  # evaluation env seeds start here
EPISODE_STRIDE = 10**5  # env seeds of one evaluation seed s: base + s·stride + [0, stride)
TRAIN_SEED_LIMIT = 10**6  # training demonstrations use env seeds below this
_MAX_SEED = 2**32 - 1  # numpy / gymnasium seeding keeps seeds in uint32
ACTION_DIM = 4


class ActionPolicy(Protocol):
    def predict_action(self, observation: dict[str, Any]) -> Any:  # -> [p, Da]
        ...


def eval_seed(seed: int, index: int) -> int:
    """Env seed of episode ``index`` (per task) of the evaluation with seed ``seed``."""
    if not 0 <= index < EPISODE_STRIDE:
        raise ValueError(f"episode index must be in [0, {EPISODE_STRIDE}), got {index}")
    env_seed = EVAL_SEED_BASE + seed * EPISODE_STRIDE + index
    if seed < 0 or env_seed > _MAX_SEED:
        raise ValueError(f"evaluation seed must be in [0, {(_MAX_SEED - EVAL_SEED_BASE) // EPISODE_STRIDE}]")
    return env_seed


def query_seed(task: str, env_seed: int, step: int) -> int:
    """Seed of the policy query at env step ``step`` of an episode (independent of workers)."""
    ss = np.random.SeedSequence([zlib.crc32(task.encode()), env_seed, step])
    return int(ss.generate_state(1, np.uint32)[0])


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("drawer-open-v3",)
    episodes: int = 10  # per task
    seed: int = 0  # selects the block of env seeds (see eval_seed)
    replan_every: int = 8  # env steps run from each chunk before the next query (at most p)
    max_steps: int = 500  # per episode; Meta-World's own limit is 500
    image_size: int = 128  # square camera images; match the policy's training data
    workers: int = 1  # env processes; 1 = inline in the main process
    videos_per_task: int = 2  # first episodes of each task recorded as mp4 + contact-sheet rows
    sheet_frames: int = 6  # frames per contact-sheet row
    video_codec: str = "h264"
    execution: ExecutionConfig | None = None  # None: inference takes no env time (see the module doc)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("at least one task is required")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task in {list(self.tasks)}")
        for task in self.tasks:
            MetaWorldConfig(task=task, image_size=self.image_size, max_steps=self.max_steps)  # validates
        if not 1 <= self.episodes <= EPISODE_STRIDE:
            raise ValueError(f"episodes must be in [1, {EPISODE_STRIDE}], got {self.episodes}")
        eval_seed(self.seed, self.episodes - 1)
        for name in ("replan_every", "workers", "sheet_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.videos_per_task < 0:
            raise ValueError(f"videos_per_task must be >= 0, got {self.videos_per_task}")
        if self.execution is not None and self.execution.horizon != self.replan_every:
            raise ValueError(
                f"execution.horizon ({self.execution.horizon}) must equal replan_every ({self.replan_every})"
            )


# ---- policy side ----------------------------------------------------------------------------
def _seed_globals(policy: Any, seed: int) -> None:
    np.random.seed(seed)
    torch = sys.modules.get("torch")  # only when the policy brought torch in
    if torch is not None:
        torch.manual_seed(seed)
    reseed = getattr(policy, "reseed", None)
    if reseed is not None:
        reseed(seed)


def _as_chunk(chunk: Any, who: str) -> np.ndarray:
    """Policy output -> float32 [p, 4], with a clear error for anything else."""
    if hasattr(chunk, "detach"):  # torch tensor
        chunk = chunk.detach().float().cpu().numpy()
    chunk_pD = np.asarray(chunk, dtype=np.float32)
    if chunk_pD.ndim == 1:
        chunk_pD = chunk_pD[None]
    if chunk_pD.ndim != 2 or chunk_pD.shape[0] < 1 or chunk_pD.shape[1] != ACTION_DIM:
        raise ValueError(
            f"{who} returned an action chunk of shape {tuple(np.shape(chunk))}; Meta-World ({EMBODIMENT}) "
            f"needs [p, {ACTION_DIM}] in robot units"
        )
    if not np.isfinite(chunk_pD).all():
        raise ValueError(f"{who} returned a non-finite action chunk")
    return chunk_pD


def _query(
    policy: Any, observations: list[dict[str, Any]], seeds: list[int], who: str
) -> tuple[list[np.ndarray], list[float]]:
    """Chunks for ``observations`` and the wall time (s) of each policy call made."""
    batch_fn = getattr(policy, "predict_action_batch", None)
    if batch_fn is not None:
        t0 = time.perf_counter()
        chunks_B = batch_fn(observations, seeds)
        latency = time.perf_counter() - t0
        if len(chunks_B) != len(observations):
            raise ValueError(
                f"{who}.predict_action_batch returned {len(chunks_B)} chunks for {len(observations)}"
            )
        return [_as_chunk(c, who) for c in chunks_B], [latency]
    chunks, latencies = [], []
    for obs, seed in zip(observations, seeds, strict=True):
        _seed_globals(policy, seed)
        t0 = time.perf_counter()
        chunk = policy.predict_action(obs)
        latencies.append(time.perf_counter() - t0)
        chunks.append(_as_chunk(chunk, who))
    return chunks, latencies


def _jobs(cfg: EvalConfig, video_dir: Path | None, privileged: bool, images: bool) -> deque[EpisodeJob]:
    jobs: deque[EpisodeJob] = deque()
    for task in cfg.tasks:
        for i in range(cfg.episodes):
            env_seed = eval_seed(cfg.seed, i)
            record = i < cfg.videos_per_task
            video = str(video_dir / f"{task}_ep{i:03d}_seed{env_seed}.mp4") if record and video_dir else None
            jobs.append(EpisodeJob(task, i, env_seed, record, video, privileged, images))
    return jobs


def hold_still(last_action: np.ndarray | None) -> np.ndarray:
    """Meta-World's no-motion action: zero end-effector displacement, the last gripper command."""
    hold = np.zeros(ACTION_DIM, dtype=np.float32)
    if last_action is not None:
        hold[3] = last_action[3]
    return hold


@dataclass
class _Running:
    job: EpisodeJob
    queries: int = 0
    execution: EpisodeExecution | None = None


def _query_guided(
    policy: Any, waiting: list[tuple[Any, _Running, dict[str, Any]]], seeds: list[int], who: str
) -> tuple[list[np.ndarray], list[float]]:
    """RTC queries, one observation at a time: each carries its own episode's old chunk."""
    chunks, latencies = [], []
    for (_, run, obs), seed in zip(waiting, seeds, strict=True):
        ex = run.execution
        _seed_globals(policy, seed)
        t0 = time.perf_counter()
        chunk = policy.predict_action_guided(
            obs,
            ex.guidance(),
            ex.cfg.delay,
            schedule=ex.cfg.schedule,
            max_guidance_weight=ex.cfg.max_guidance_weight,
            seed=seed,
        )
        latencies.append(time.perf_counter() - t0)
        chunks.append(_as_chunk(chunk, who))
    return chunks, latencies


def evaluate(
    policy: ActionPolicy,
    cfg: EvalConfig,
    *,
    name: str | None = None,
    video_dir: str | Path | None = None,
    workers: EnvWorkers | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run ``cfg.episodes`` seeded episodes per task and measure success, latency and throughput.

    ``workers`` (an :class:`EnvWorkers` built for a compatible config) lets several policies
    share one pool; otherwise a pool of ``cfg.workers`` is started and closed here. Videos of
    the first ``cfg.videos_per_task`` episodes per task go to ``video_dir`` when given.
    """
    name = name or getattr(policy, "name", None) or type(policy).__name__
    if not callable(getattr(policy, "predict_action", None)):
        raise TypeError(f"policy {name!r} has no predict_action(observation) method")
    privileged = bool(getattr(policy, "needs_privileged_obs", False))
    video_path = Path(video_dir) if video_dir is not None else None
    if video_path is not None:
        video_path.mkdir(parents=True, exist_ok=True)
    own_pool = workers is None
    if workers is not None and not workers.matches(cfg):
        raise ValueError(f"the env workers were built for {workers.settings}, which does not fit {cfg}")
    pool = EnvWorkers.for_config(cfg) if workers is None else workers
    try:
        return _run(policy, cfg, name, privileged, video_path, pool, pool.startup_s, progress)
    except BaseException:
        if not own_pool:
            pool.drain()  # a shared pool stays usable after a policy error
        raise
    finally:
        if own_pool:
            pool.close()


def _run(
    policy: Any,
    cfg: EvalConfig,
    name: str,
    privileged: bool,
    video_dir: Path | None,
    pool: EnvWorkers,
    startup: float,
    progress: bool,
) -> EvalResult:
    from tqdm import tqdm

    jobs = _jobs(cfg, video_dir, privileged, bool(getattr(policy, "needs_images", True)))
    n_total = len(jobs)
    running: dict[int, _Running] = {}  # worker index -> its episode
    results: list[EpisodeResult] = []
    sheet: list[SheetRow] = []
    latencies: list[float] = []
    chunks_answered = 0
    execution = cfg.execution
    jumps: tuple[list[float], list[float]] = ([], [])
    if (
        execution is not None
        and execution.mode == "rtc"
        and not callable(getattr(policy, "predict_action_guided", None))
    ):
        raise TypeError(f"policy {name!r} has no predict_action_guided(): it cannot run rtc execution")
    bar = tqdm(total=n_total, desc=f"eval {name}", disable=not progress)

    def start(worker: Any) -> None:
        job = jobs.popleft()
        ex = None if execution is None else EpisodeExecution(execution, hold_still)
        running[worker.index] = _Running(job, execution=ex)
        worker.send(("reset", job))

    t0 = time.perf_counter()
    for w in pool.workers:
        if jobs:
            start(w)
    while running:
        waiting: list[tuple[Any, _Running, dict[str, Any]]] = []
        for w in pool.ready([w for w in pool.workers if w.index in running]):
            run = running[w.index]
            kind, payload = w.recv()
            if kind == "error":
                raise RuntimeError(
                    f"evaluation worker {w.index} failed on {run.job.task} (env seed {run.job.env_seed}):\n{payload}"
                )
            if kind == "end":
                job = run.job
                results.append(
                    EpisodeResult(
                        job.task,
                        job.index,
                        job.env_seed,
                        payload["success"],
                        payload["length"],
                        run.queries,
                        payload["final_state"],
                        payload["video"],
                    )
                )
                if run.execution is not None:
                    at_switch, elsewhere = run.execution.discontinuity(payload["length"])
                    jumps[0].extend(at_switch)
                    jumps[1].extend(elsewhere)
                if payload["sheet"] is not None:
                    steps, frames = payload["sheet"]
                    sheet.append(
                        SheetRow(job.task, job.env_seed, payload["success"], payload["length"], steps, frames)
                    )
                del running[w.index]
                bar.update(1)
                if jobs:
                    start(w)
                continue
            obs = {
                "images": payload["images"],
                "state": payload["state"],
                "instruction": TASK_INSTRUCTIONS[run.job.task],
                "embodiment": EMBODIMENT,
            }
            if privileged:
                obs["privileged"] = {"task": run.job.task, "full_obs": payload["full_obs"]}
            waiting.append((w, run, obs | {"_step": payload["steps"]}))
        if not waiting:
            continue
        seeds = [query_seed(run.job.task, run.job.env_seed, obs.pop("_step")) for _, run, obs in waiting]
        guided = [
            i
            for i, (_, run, _) in enumerate(waiting)
            if run.execution and run.execution.guidance() is not None
        ]
        plain = [i for i in range(len(waiting)) if i not in guided]
        chunks: list[np.ndarray | None] = [None] * len(waiting)
        if plain:
            got, call_s = _query(policy, [waiting[i][2] for i in plain], [seeds[i] for i in plain], name)
            latencies += call_s
            for i, c in zip(plain, got, strict=True):
                chunks[i] = c
        if guided:
            got, call_s = _query_guided(
                policy, [waiting[i] for i in guided], [seeds[i] for i in guided], name
            )
            latencies += call_s
            for i, c in zip(guided, got, strict=True):
                chunks[i] = c
        chunks_answered += len(chunks)
        for (w, run, _), chunk_p4 in zip(waiting, chunks, strict=True):
            run.queries += 1
            if run.execution is None:
                w.send(("act", chunk_p4[: cfg.replan_every]))
            else:
                w.send(("act", run.execution.next_actions(chunk_p4)))
    wall = time.perf_counter() - t0
    bar.close()
    result = summarise(name, cfg, results, sheet, latencies, chunks_answered, wall, startup)
    if execution is not None:
        result.boundary = {
            "switch_mean": float(np.mean(jumps[0])) if jumps[0] else float("nan"),
            "elsewhere_mean": float(np.mean(jumps[1])) if jumps[1] else float("nan"),
            "switches": len(jumps[0]),
        }
    return result
