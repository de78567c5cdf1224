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
* **Processes.** The policy lives in the main process; ``W`` env workers (spawned processes,
  each owning one simulator + GL context per task) step and render. A torch policy is large
  and multithreaded, so one copy answering batched queries is cheaper than W copies, while
  rendering, the dominant per-step cost on CPU, parallelises across workers. The main loop
  waits for any worker (``multiprocessing.connection.wait``), sends every observation that
  is waiting at that moment to the policy in one call (``predict_action_batch`` when the
  policy has it, otherwise one ``predict_action`` each), and sends the chunks back; a
  finished episode frees its worker for the next one. ``W = 1`` runs the env inline in the
  main process (no IPC) through the same code. Spawned workers re-import the caller's
  ``__main__``: scripts need the ``if __name__ == "__main__"`` guard (the CLI keeps its
  top-level imports light for the same reason).
* **Determinism.** Every query carries a seed derived from (task, env seed, step): it goes to
  ``predict_action_batch(observations, seeds)``, or to ``policy.reseed(seed)`` and numpy's and
  torch's global RNGs before ``predict_action``. Neither env seeds nor query seeds depend on
  which worker ran an episode or when, so results are identical for any ``W`` (tested).
* **Rendering only what is looked at.** On CPU, rendering two cameras costs many times the physics
  step; inside an open-loop chunk only the observation of the next query is rendered (every
  frame of a recorded episode is), and none at all for a policy with ``needs_images = False``
  (the scripted baselines).
* **Measurements.** Latency = wall time of each policy call (``perf_counter`` around the
  call only); episode lengths; episodes/s and env steps/s of the rollout phase, with worker
  start-up (process spawn, imports, simulator builds) reported apart.
* **Recording.** The first ``videos_per_task`` episodes of each task keep every frame (camera
  roles side by side) in their worker, which writes the mp4 (``schemas.video.encode_video_bytes``)
  and sends back ``sheet_frames`` evenly spaced frames for the contact sheet.

The observation protocol and the optional policy hooks are described in
:mod:`policy.baselines`.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import sys
import time
import traceback
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policy.envs import EMBODIMENT, TASK_INSTRUCTIONS, MetaWorldConfig, MetaWorldSim
from policy.envs.metaworld_env import ROLES

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


@dataclass(frozen=True)
class EpisodeJob:
    task: str
    index: int
    env_seed: int
    record: bool  # keep frames: contact-sheet row, and an mp4 when video_path is set
    video_path: str | None
    privileged: bool  # send the full simulator observation (scripted baselines only)
    images: bool = True  # render observations for the policy (False: policy.needs_images is False)


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (everything but the contact-sheet pixels)."""
        out = {k: v for k, v in asdict(self).items() if k != "sheet"}
        out["config"]["tasks"] = list(self.config.tasks)
        return out


# ---- env side: runs in a worker process, or inline --------------------------------------------
class _EnvRunner:
    """One simulator per task; answers ``reset`` / ``act`` messages for one episode at a time."""

    def __init__(
        self, tasks: tuple[str, ...], image_size: int, max_steps: int, codec: str, sheet_frames: int
    ):
        self.codec, self.sheet_frames = codec, sheet_frames
        self.sims = {
            task: MetaWorldSim(
                MetaWorldConfig(task=task, image_size=image_size, max_steps=max_steps, steps_after_success=0)
            )
            for task in tasks
        }
        self.job: EpisodeJob | None = None
        self.frames: list[np.ndarray] = []

    def _payload(self, obs: Any) -> dict[str, Any]:
        images = obs.images if self.job.images else {}
        out = {"images": images, "state": obs.state, "steps": self.sims[self.job.task].steps}
        if self.job.privileged:
            out["full_obs"] = obs.full_obs
        return out

    def _record(self, obs: Any) -> None:
        if self.job.record:
            self.frames.append(np.concatenate([obs.images[r] for r in ROLES], axis=1))  # [H, R·W, 3]

    def handle(self, kind: str, arg: Any) -> tuple[str, Any]:
        if kind == "reset":
            self.job, self.frames = arg, []
            sim = self.sims[self.job.task]
            renderer = sim.renderer
            sim.renderer = renderer if self.job.record or self.job.images else None
            try:
                obs = sim.reset(self.job.env_seed)
            finally:
                sim.renderer = renderer
            self._record(obs)
            return "obs", self._payload(obs)
        if kind == "act":
            sim = self.sims[self.job.task]
            success = done = False
            renderer = sim.renderer
            try:
                for j, action in enumerate(arg):  # [k, 4], k <= replan_every
                    # render only what is looked at: every frame of a recorded episode, else the
                    # observation of the next query (the sim skips rendering without a renderer)
                    last = j == len(arg) - 1
                    sim.renderer = renderer if self.job.record or (last and self.job.images) else None
                    obs, _, success, done = sim.step(action)
                    self._record(obs)
                    if success or done:
                        break
            finally:
                sim.renderer = renderer
            if not (success or done):
                return "obs", self._payload(obs)
            return "end", self._finish(success, sim.steps, obs.state)
        raise ValueError(f"unknown message {kind!r}")

    def _finish(self, success: bool, length: int, state: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": success,
            "length": length,
            "final_state": tuple(float(x) for x in state),
            "video": None,
            "sheet": None,
        }
        if self.job.record and self.frames:
            frames_THWC = np.stack(self.frames)
            if self.job.video_path is not None:
                from schemas.video import encode_video_bytes

                video = encode_video_bytes(frames_THWC, fps=self.sims[self.job.task].fps, codec=self.codec)
                part = Path(self.job.video_path).with_name(Path(self.job.video_path).name + ".part")
                part.parent.mkdir(parents=True, exist_ok=True)
                part.write_bytes(video)
                part.replace(self.job.video_path)  # readers never see a half-written video
                out["video"] = self.job.video_path
            steps = np.unique(np.linspace(0, len(frames_THWC) - 1, self.sheet_frames).round().astype(int))
            out["sheet"] = (tuple(int(s) for s in steps), frames_THWC[steps])
        self.frames = []
        return out

    def close(self) -> None:
        for sim in self.sims.values():
            sim.close()
        self.sims = {}


def _worker_main(conn: Any, settings: dict[str, Any]) -> None:
    try:
        runner = _EnvRunner(**settings)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    try:
        while True:
            kind, arg = conn.recv()
            if kind == "close":
                break
            try:
                reply = runner.handle(kind, arg)
            except Exception:
                reply = ("error", traceback.format_exc())
            conn.send(reply)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        runner.close()


class _InlineWorker:
    def __init__(self, index: int, settings: dict[str, Any]):
        self.index = index
        self.runner = _EnvRunner(**settings)
        self._reply: tuple[str, Any] | None = None

    def send(self, msg: tuple[str, Any]) -> None:
        try:
            self._reply = self.runner.handle(*msg)
        except Exception:
            self._reply = ("error", traceback.format_exc())

    def recv(self) -> tuple[str, Any]:
        reply, self._reply = self._reply, None
        return reply

    def discard_reply(self) -> bool:
        self._reply = None
        return True

    def close(self) -> None:
        self.runner.close()


class _ProcessWorker:
    def __init__(self, index: int, settings: dict[str, Any], ctx: Any):
        self.index = index
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, settings), daemon=True, name=f"gwp-eval-{index}"
        )
        self.proc.start()
        child.close()
        self.pending = False  # a message was sent whose reply has not been read

    def send(self, msg: tuple[str, Any]) -> None:
        self.conn.send(msg)
        self.pending = True

    def discard_reply(self, timeout_s: float = 60.0) -> bool:
        """Read and drop an outstanding reply; False when none came in time."""
        if self.pending and self.conn.poll(timeout_s):
            self.recv()
        return not self.pending

    def recv(self) -> tuple[str, Any]:
        self.pending = False
        try:
            return self.conn.recv()
        except (EOFError, ConnectionResetError):
            self.proc.join(timeout=5)
            raise RuntimeError(
                f"evaluation worker {self.index} died (exit code {self.proc.exitcode})"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("close", None))
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


class EnvWorkers:
    """``n`` env workers with one simulator per task each; reusable across policies.

    ``n == 1`` steps the env inline; ``n > 1`` uses ``n`` spawned processes (each with its
    own GL context, as EGL/OSMesa contexts do not survive ``fork``). The constructor returns
    once every worker has built its simulators.
    """

    def __init__(
        self,
        n: int,
        tasks: tuple[str, ...],
        image_size: int,
        max_steps: int,
        codec: str = "h264",
        sheet_frames: int = 6,
        start_method: str = "spawn",
    ):
        if n < 1:
            raise ValueError(f"need at least one worker, got {n}")
        self.settings = {
            "tasks": tuple(tasks),
            "image_size": image_size,
            "max_steps": max_steps,
            "codec": codec,
            "sheet_frames": sheet_frames,
        }
        t0 = time.perf_counter()
        self.workers: list[Any] = []
        try:
            if n == 1:
                self.workers = [_InlineWorker(0, self.settings)]
            else:
                ctx = mp.get_context(start_method)
                self.workers = [_ProcessWorker(i, self.settings, ctx) for i in range(n)]
                for w in self.workers:
                    kind, payload = w.recv()
                    if kind != "ready":
                        raise RuntimeError(f"evaluation worker {w.index} failed to start:\n{payload}")
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    @classmethod
    def for_config(cls, cfg: EvalConfig) -> EnvWorkers:
        return cls(cfg.workers, cfg.tasks, cfg.image_size, cfg.max_steps, cfg.video_codec, cfg.sheet_frames)

    def matches(self, cfg: EvalConfig) -> bool:
        return (
            set(cfg.tasks) <= set(self.settings["tasks"])
            and cfg.image_size == self.settings["image_size"]
            and cfg.max_steps == self.settings["max_steps"]
            and cfg.video_codec == self.settings["codec"]
            and cfg.sheet_frames == self.settings["sheet_frames"]
        )

    def drain(self) -> None:
        """After an aborted evaluation: drop replies still in flight, so the pool can be reused.

        A worker that does not answer in time makes the pool unusable; it is closed.
        """
        if not all(w.discard_reply() for w in self.workers):
            self.close()

    def ready(self, busy: list[Any]) -> list[Any]:
        """The busy workers whose reply has arrived (blocks until at least one)."""
        if isinstance(busy[0], _InlineWorker):
            return [w for w in busy if w._reply is not None]
        by_conn = {w.conn: w for w in busy}
        return [by_conn[c] for c in wait_connections(list(by_conn))]

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def __enter__(self) -> EnvWorkers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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


@dataclass
class _Running:
    job: EpisodeJob
    queries: int = 0


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
    bar = tqdm(total=n_total, desc=f"eval {name}", disable=not progress)

    def start(worker: Any) -> None:
        job = jobs.popleft()
        running[worker.index] = _Running(job)
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
        chunks, call_s = _query(policy, [obs for _, _, obs in waiting], seeds, name)
        latencies += call_s
        chunks_answered += len(chunks)
        for (w, run, _), chunk_p4 in zip(waiting, chunks, strict=True):
            run.queries += 1
            w.send(("act", chunk_p4[: cfg.replan_every]))
    wall = time.perf_counter() - t0
    bar.close()
    return _summarise(name, cfg, results, sheet, latencies, chunks_answered, wall, startup)


def _summarise(
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
