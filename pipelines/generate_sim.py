"""Generate Meta-World expert demonstrations as a LeRobot v3.0 dataset (the embedded default data).

    python -m pipelines.generate_sim --tasks drawer-open-v3,push-v3 --episodes-per-task 20 \\
        --seed 0 --image-size 128 --out data/metaworld [--codec av1] [--workers 2]

Top to bottom:

1. for each task, try seeds ``seed, seed+1, …`` (at most ``--max-attempts`` per task) with
   the scripted expert (:func:`policy.envs.rollout_expert`), in order, until
   ``--episodes-per-task`` succeeded; failed rollouts are counted, never written;
2. with ``--workers W > 1`` rollouts run in W spawned processes (each keeps one simulator
   and GL context at a time) with 2W in flight; results are consumed in seed order, so the
   dataset does not depend on W;
3. episodes stream (a generator, never a list) into
   :func:`curation.formats.lerobot_v3.write_lerobot_v3`; with ``--no-actions`` they are
   written as video only instead (:func:`curation.formats.raw_video.write_raw_video` of the
   episodes without their actions and state: sidecars with no step table, a mapping with
   ``"actions": false``), the action-free video pretraining learns from;
4. ``generation.json`` in the dataset root (``meta/generation.json`` for video only) records
   tasks, seeds used and failed, counts and wall time.

Default tasks are ones whose goal (the object's place) is visible in 128² images and whose
expert succeeds ≥ 95 % (Meta-World 3.1.1, seeds 0–99: drawer-open 100/100, button-press-
topdown 100/100, door-open 97/100, push 100/100; mean steps to success 89, 66, 82, 63);
reach is left out (its goal is a 1–2 pixel dot).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from curation.config import VideoCodec
from pipelines.config_flags import add_field_flags
from pipelines.usage import ArgumentParser, JobFailed, UsageError, command
from policy.envs.metaworld_env import TASK_INSTRUCTIONS, MetaWorldConfig, MetaWorldSim, rollout_expert
from schemas import Episode

DEFAULT_TASKS = ("drawer-open-v3", "button-press-topdown-v3", "door-open-v3", "push-v3")
GENERATION_FILE = "generation.json"


@dataclass(frozen=True)
class GenerateConfig:
    tasks: tuple[str, ...] = field(
        default=DEFAULT_TASKS, metadata={"help": "comma-separated Meta-World v3 tasks"}
    )
    episodes_per_task: int = field(default=20, metadata={"help": "successful expert episodes per task"})
    seed: int = field(default=0, metadata={"help": "first seed; attempt j of a task uses seed + j"})
    image_size: int = field(default=128, metadata={"help": "square camera images, pixels"})
    max_attempts: int = field(default=0, metadata={"help": "per task; 0 = 2 × episodes + 5"})
    steps_after_success: int = field(
        default=8, metadata={"help": "frames kept after the first success, then stop"}
    )
    max_steps: int = field(
        default=500,
        metadata={"help": "per episode (the env allows 500); the expert fails if not done by then"},
    )
    codec: VideoCodec = field(default="av1", metadata={"help": "video codec of the dataset"})
    workers: int = field(default=1, metadata={"help": "rollout processes"})
    repo_id: str = field(
        default="local/metaworld-expert", metadata={"help": "repo id written into the dataset's metadata"}
    )
    actions: bool = field(
        default=True, metadata={"help": "False: video only, as raw video without actions (for pretraining)"}
    )

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("at least one task is required")
        for task in self.tasks:
            MetaWorldConfig(task=task)  # raises with a "did you mean" for a misspelt task
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"duplicate task in {list(self.tasks)}")
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def attempts(self) -> int:
        return self.max_attempts or 2 * self.episodes_per_task + 5

    def sim_config(self, task: str) -> MetaWorldConfig:
        return MetaWorldConfig(
            task=task,
            image_size=self.image_size,
            steps_after_success=self.steps_after_success,
            max_steps=self.max_steps,
        )


@dataclass
class TaskReport:
    instruction: str
    successes: int = 0
    failures: int = 0
    frames: int = 0
    seeds_used: list[int] = field(default_factory=list)
    seeds_failed: list[int] = field(default_factory=list)


# ---- rollouts (in this process or in workers) ------------------------------------------
_SIMS: dict[MetaWorldConfig, MetaWorldSim] = {}  # one simulator + GL context per task per process


def _rollout(job: tuple[MetaWorldConfig, int]) -> tuple[int, Episode | None]:
    cfg, seed = job
    sim = _SIMS.get(cfg)
    if sim is None:
        _close_sims()  # tasks run one after another: keep one GL context per process
        sim = _SIMS[cfg] = MetaWorldSim(cfg, seed)
    return seed, rollout_expert(cfg.task, seed, cfg, sim=sim)


def _close_sims() -> None:
    while _SIMS:
        _SIMS.popitem()[1].close()


def _results(cfg: GenerateConfig, task: str, pool: Any) -> Iterator[tuple[int, Episode | None]]:
    """Rollouts of seeds ``seed, seed+1, …`` in seed order; with a pool, a window of them in flight."""
    jobs = ((cfg.sim_config(task), cfg.seed + j) for j in range(cfg.attempts))
    if pool is None:
        yield from map(_rollout, jobs)
        return
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(_rollout, (job,)))
        if len(pending) >= 2 * cfg.workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def generate_episodes(
    cfg: GenerateConfig, reports: dict[str, TaskReport], progress: bool = True
) -> Iterator[Episode]:
    """Successful expert episodes, task by task and in seed order; fills ``reports`` as it goes.

    The output depends only on ``cfg`` minus ``workers``: a worker's extra in-flight rollouts
    past the last needed seed are dropped, not written.
    """
    from tqdm import tqdm

    pool = mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 else None
    bar = tqdm(total=len(cfg.tasks) * cfg.episodes_per_task, desc="expert episodes", disable=not progress)
    try:
        for task in cfg.tasks:
            report = reports.setdefault(task, TaskReport(instruction=TASK_INSTRUCTIONS[task]))
            for seed, episode in _results(cfg, task, pool):
                if episode is None:
                    report.failures += 1
                    report.seeds_failed.append(seed)
                else:
                    report.successes += 1
                    report.frames += episode.length
                    report.seeds_used.append(seed)
                    bar.update(1)
                    yield episode
                bar.set_postfix(task=task, failed=sum(r.failures for r in reports.values()))
                if report.successes == cfg.episodes_per_task:
                    break
            if report.successes < cfg.episodes_per_task:
                print(
                    f"generate_sim: {task}: only {report.successes}/{cfg.episodes_per_task} successes "
                    f"in {cfg.attempts} attempts",
                    file=sys.stderr,
                )
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _close_sims()


def generate(cfg: GenerateConfig, out: str | Path, progress: bool = True) -> dict:
    """Write the dataset to ``out`` and return the generation record (also in ``generation.json``)."""
    from curation.formats.lerobot_v3 import write_lerobot_v3
    from curation.formats.raw_video import write_raw_video

    out = Path(out)
    reports: dict[str, TaskReport] = {}
    t0 = time.perf_counter()
    episodes = generate_episodes(cfg, reports, progress=progress)
    try:
        if cfg.actions:
            root = write_lerobot_v3(
                episodes, out, repo_id=cfg.repo_id, robot_type="sawyer", codec=cfg.codec, progress=False
            )
        else:  # the raw-video writer takes a list: video-only sets are small (frames stay inline)
            root = write_raw_video([ep.without_actions() for ep in episodes], out, codec=cfg.codec)
    except ValueError:
        if any(r.successes for r in reports.values()):
            raise
        failed = {task: r.failures for task, r in reports.items()}
        raise RuntimeError(
            f"no expert episode succeeded (failures per task: {failed}); nothing written"
        ) from None
    wall = time.perf_counter() - t0
    from importlib.metadata import version

    record = {
        "config": {**asdict(cfg), "tasks": list(cfg.tasks)},
        "metaworld_version": version("metaworld"),
        "episodes": sum(r.successes for r in reports.values()),
        "failures": sum(r.failures for r in reports.values()),
        "frames": sum(r.frames for r in reports.values()),
        "wall_time_s": round(wall, 3),
        "tasks": {task: asdict(r) for task, r in reports.items()},
    }
    root = Path(root) if root is not None else out
    # raw video takes every top-level *.json for an episode's sidecar: the record goes below
    path = root / GENERATION_FILE if cfg.actions else root / "meta" / GENERATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


GENERATE_FLAGS = tuple(
    f.name for f in fields(GenerateConfig) if f.name != "actions"
)  # `actions`: --no-actions


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="gwp generate-sim", description="Generate Meta-World expert demonstrations (LeRobot v3.0)."
    )
    add_field_flags(p, GenerateConfig, GENERATE_FLAGS, defaults=GenerateConfig())
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument(
        "--no-actions",
        action="store_true",
        help='write video only (raw video whose mapping says "actions": false), for pretraining',
    )
    p.add_argument("--no-progress", action="store_true")
    return p


@command("gwp generate-sim")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = GenerateConfig(
            **{name: getattr(args, name) for name in GENERATE_FLAGS}, actions=not args.no_actions
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        record = generate(cfg, args.out, progress=not args.no_progress)
    except (RuntimeError, FileExistsError) as err:
        raise JobFailed(str(err)) from err
    print(
        f"wrote {record['episodes']} episodes ({record['frames']} frames, {record['failures']} expert "
        f"failures) to {args.out} in {record['wall_time_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
