"""What the video loss and pretraining buy, with error bars: arms × training seeds, closed loop.

    python -m benchmarks.ablation --out runs/ablation                  # hours; rerun to resume
    python -m benchmarks.ablation --out runs/ablation-smoke --preset smoke   # a minute (the test)

Every arm fine-tunes the demo's policy (``debug`` model, the demo's fine-tune recipe) on the
demo's tasks and is evaluated closed loop on the same held-out env seeds (≥ 10⁹; training data
uses seeds < 10⁶). The arms (:data:`ARMS`):

* ``gwp``            pretrained on the demonstrations and on action-free video of other tasks,
                     fine-tuned with λ_v = 1 (the demo's GWP policy);
* ``no_video``       the same pretraining, fine-tuned with λ_v = 0;
* ``scratch``        no pretraining (random init), λ_v = 1;
* ``no_actionfree``  pretrained on the demonstrations alone (no action-free video), λ_v = 1;
* ``quarter_<arm>``  each of the above fine-tuned on a quarter of the demonstrations (the rest
                     is held out with ``--heldout-fraction``, so the same split code picks them).

Each arm runs with training seeds ``0 … seeds-1`` (the seed of its pretraining and fine-tune).

Top to bottom, each step a subprocess running the command a user would type, each skipped on a
rerun when its folder holds a ``done.json`` with the same commands (an unfinished one resumes:
the trainers continue from their checkpoints; one whose commands changed starts over):

1. ``data/``        expert demonstrations (``gwp generate-sim``), the action-free video of the
                    other tasks (``--no-actions``), and the curations: with that video (every
                    fine-tune reads its demonstrations there) and, for ``no_actionfree``, without;
2. ``pretrain/<data>/seed<k>/``  the pretrainings, ``--jobs`` at a time (one thread each);
3. ``cells/<arm>/seed<k>/``      fine-tune + closed-loop evaluation, ``--jobs`` at a time;
4. ``ablation.json``, ``ablation.md`` and ``ablation.png`` in ``--out``: success per task and arm
   as mean ± std (and min–max) over seeds, and the Wilson 95 % interval of the pooled episodes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipelines.usage import ArgumentParser, JobFailed, UsageError, command
from policy.eval_metrics import wilson_interval
from schemas.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("gwp", "no_video", "scratch", "no_actionfree")
ALL_ARMS = ARMS + tuple(f"quarter_{a}" for a in ARMS)


@dataclass(frozen=True)
class AblationConfig:
    name: str
    tasks: tuple[str, ...]
    episodes_per_task: int  # demonstrations per task, with actions
    video_tasks: tuple[str, ...]  # other tasks whose video, without actions, pretraining sees
    video_episodes: int  # per video task
    model: str = "debug"
    train_preset: str = "demo"
    pretrain_steps: int = 200
    finetune_steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    heldout_fraction: float = 0.1  # the fine-tune's own held-out episodes (as the demo)
    seeds: int = 3
    eval_episodes: int = 50  # per task, the same env seeds for every arm and seed
    eval_max_steps: int = 200
    replan_every: int = 4
    image_size: int = 64
    arms: tuple[str, ...] = ALL_ARMS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(ALL_ARMS))
        if unknown:
            raise UsageError(f"unknown arms {unknown}; choose from {', '.join(ALL_ARMS)}")
        if self.seeds < 1 or self.eval_episodes < 1:
            raise UsageError("--seeds and the evaluation episodes must be >= 1")

    def quarter_heldout(self) -> float:
        """The held-out fraction that leaves a quarter of what the full arms train on."""
        return 1 - (1 - self.heldout_fraction) / 4


PRESETS: Registry[AblationConfig] = Registry("ablation preset")
# The demo's data and recipe (pipelines/demo.py, preset `default`), plus action-free video of
# three other Meta-World tasks for pretraining.
PRESETS.register(
    "default",
    AblationConfig(
        name="default",
        tasks=("drawer-open-v3", "button-press-topdown-v3"),
        episodes_per_task=60,
        video_tasks=("reach-v3", "door-open-v3", "button-press-v3"),
        video_episodes=20,
    ),
)
# Every step for real, at the smallest size that runs them: for the tests, not for reading.
PRESETS.register(
    "smoke",
    AblationConfig(
        name="smoke",
        tasks=("button-press-topdown-v3",),
        episodes_per_task=4,
        video_tasks=("reach-v3",),
        video_episodes=1,
        train_preset="debug",
        pretrain_steps=2,
        finetune_steps=2,
        batch_size=4,
        heldout_fraction=0.0,
        seeds=2,
        eval_episodes=1,
        eval_max_steps=20,
        arms=("gwp", "scratch"),
    ),
)


def log(msg: str) -> None:
    print(f"[ablation {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class Step:
    commands: list[list[str]]
    inputs: object = None  # what else decides the result (a curation job's content)

    def plan(self) -> dict:
        return json.loads(json.dumps({"commands": self.commands, "inputs": self.inputs}))


def run_step(folder: Path, step: Step, env: dict[str, str], stale: bool = False) -> bool:
    """Runs the step's commands in order unless ``folder/done.json`` says they ran with the same
    plan and ``stale`` (a step it reads from ran again) is false; True if they ran now."""
    plan = step.plan()
    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text())["plan"] == plan and not stale:
        return False
    planned = folder / "plan.json"
    if stale or (planned.exists() and json.loads(planned.read_text()) != plan):
        shutil.rmtree(folder, ignore_errors=True)  # old checkpoints or shards must not be resumed from
    done.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    planned.write_text(json.dumps(plan))
    start = time.time()
    with open(folder / "log.txt", "a") as out:  # two steps run at once: their logs apart
        for cmd in step.commands:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0:
                raise JobFailed(f"{folder}: exit {code} from {' '.join(cmd)} (log: {folder / 'log.txt'})")
    done.write_text(json.dumps({"plan": plan, "seconds": time.time() - start}))
    return True


def data_steps(cfg: AblationConfig, data: Path) -> tuple[dict[Path, Step], dict[str, Path]]:
    """The steps writing the sources and the curations the arms need; the curated folders by name."""
    common = ["--image-size", str(cfg.image_size), "--no-progress", "--workers", "1", "--codec", "h264"]
    demos, video = data / "sources" / "demos", data / "sources" / "video_only"
    steps = {
        data / "sources": Step([
            py("pipelines.generate_sim", "--tasks", ",".join(cfg.tasks), "--episodes-per-task",
               str(cfg.episodes_per_task), "--seed", "0", "--out", str(demos), *common),
            py("pipelines.generate_sim", "--tasks", ",".join(cfg.video_tasks), "--episodes-per-task",
               str(cfg.video_episodes), "--seed", "200000", "--no-actions", "--out", str(video), *common),
        ])
    }  # fmt: skip
    from pipelines.demo_config import get_demo_config  # the demo's curation settings: the same samples

    curation = get_demo_config("default").curation.to_dict()
    # every fine-tune reads the demonstrations from the curation with video (it leaves the
    # action-free rows out); the one without is for the no_actionfree arms' pretraining only
    needed = {"with_video"} | {d for a in cfg.arms if (d := arm_recipe(a)[0])}
    shards = {}
    for name, sources in (("with_video", [demos, video]), ("demos_only", [demos])):
        if name not in needed:
            continue
        shards[name] = data / name / "shards"
        job = {"sources": [str(s) for s in sources], "out": str(shards[name]), "curation": curation,
               "run": {"progress": False}}  # fmt: skip
        path = data / f"curate_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job, indent=2))
        steps[data / name] = Step([py("pipelines.curate", "--config", str(path))], inputs=job)
    return steps, shards


def arm_recipe(arm: str) -> tuple[str | None, float]:
    """(the pretraining's data, or None for random init; λ_v) of ``arm``."""
    base = arm.removeprefix("quarter_")
    return {
        "gwp": ("with_video", 1.0),
        "no_video": ("with_video", 0.0),
        "scratch": (None, 1.0),
        "no_actionfree": ("demos_only", 1.0),
    }[base]


def train_args(cfg: AblationConfig, shards: Path, seed: int) -> list[str]:
    return ["--data", str(shards), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--seed", str(seed),
            "--no-progress", "--threads", "1"]  # fmt: skip


def cell_step(cfg: AblationConfig, out: Path, shards: dict[str, Path], arm: str, seed: int) -> Step:
    pre_data, video_weight = arm_recipe(arm)
    cell = out / "cells" / arm / f"seed{seed}"
    init = ["--init", "none", "--model", cfg.model] if pre_data is None else [
        "--init", str(out / "pretrain" / pre_data / f"seed{seed}" / "final")]  # fmt: skip
    heldout = cfg.quarter_heldout() if arm.startswith("quarter_") else cfg.heldout_fraction
    finetune = py("pipelines.finetune", "--preset", cfg.train_preset, *init, "--steps", str(cfg.finetune_steps),
                  *train_args(cfg, shards["with_video"], seed), "--video-weight", str(video_weight),
                  "--heldout-fraction", str(heldout), "--eval-every", "0", "--out", str(cell / "policy"))  # fmt: skip
    evaluate = py("pipelines.evaluate", "--policy", f"{arm}={cell / 'policy' / 'final'}", "--tasks", ",".join(cfg.tasks),
                  "--episodes", str(cfg.eval_episodes), "--max-steps", str(cfg.eval_max_steps), "--replan-every",
                  str(cfg.replan_every), "--image-size", str(cfg.image_size), "--workers", "1", "--threads", "1",
                  "--videos-per-task", "0", "--no-progress", "--out", str(cell / "eval"))  # fmt: skip
    return Step([finetune, evaluate])


def cell_successes(cell: Path, arm: str) -> dict[str, tuple[int, int]]:
    """{task: (successes, episodes)} from the cell's closed-loop evaluation."""
    rec = json.loads((cell / "eval" / arm / "results.json").read_text())
    counts: dict[str, tuple[int, int]] = {}
    for ep in rec["episodes"]:
        k, n = counts.get(ep["task"], (0, 0))
        counts[ep["task"]] = (k + int(bool(ep["success"])), n + 1)
    return counts


def summarise(cfg: AblationConfig, out: Path) -> dict:
    """Per arm and task: the seeds' success rates, mean, std, min, max; pooled episodes with Wilson CI."""
    arms = {}
    for arm in cfg.arms:
        per_seed = [cell_successes(out / "cells" / arm / f"seed{s}", arm) for s in range(cfg.seeds)]
        tasks = {}
        for task in (*cfg.tasks, "all"):
            pairs = [
                (sum(k for k, _ in c.values()), sum(n for _, n in c.values())) if task == "all" else c[task]
                for c in per_seed
            ]
            rates = np.array([k / n for k, n in pairs])
            k, n = sum(k for k, _ in pairs), sum(n for _, n in pairs)
            tasks[task] = {
                "rates": rates.tolist(),
                "mean": float(rates.mean()),
                "std": float(rates.std(ddof=1)) if len(rates) > 1 else 0.0,
                "min": float(rates.min()),
                "max": float(rates.max()),
                "successes": k,
                "episodes": n,
                "ci95": list(wilson_interval(k, n)),
            }
        arms[arm] = tasks
    return {"config": asdict(cfg), "arms": arms}


def write_markdown(summary: dict, path: Path) -> None:
    cfg = summary["config"]
    tasks = [*cfg["tasks"], "all"]
    lines = [
        f"# Ablation `{cfg['name']}`",
        "",
        f"{cfg['seeds']} training seeds per arm; {cfg['eval_episodes']} closed-loop episodes per task and seed "
        f"on the same held-out env seeds. Cell: success mean ± std over seeds [min–max]; below it the pooled "
        f"episodes' successes and Wilson 95 % interval. Plot: [ablation.png](ablation.png).",
        "",
        f"Wall time: {sum(summary['step_seconds'].values()) / 3600:.2f} h of steps (summed; `--jobs` of them ran "
        f"at a time); this invocation {summary['wall_seconds_this_invocation'] / 60:.1f} min.",
        "",
        "| arm | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for arm, per_task in summary["arms"].items():
        cells = []
        for task in tasks:
            t = per_task[task]
            lo, hi = t["ci95"]
            cells.append(
                f"{t['mean']:.0%} ± {t['std']:.0%} [{t['min']:.0%}–{t['max']:.0%}]<br>"
                f"{t['successes']}/{t['episodes']}, CI [{lo:.0%}, {hi:.0%}]"
            )
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    tasks = [*summary["config"]["tasks"], "all"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(arms) * len(tasks) / 2), 3.8))
    width = 0.8 / len(tasks)
    x = np.arange(len(arms))
    for i, task in enumerate(tasks):
        stats = [summary["arms"][a][task] for a in arms]
        mean = np.array([s["mean"] for s in stats])
        ci = np.array([s["ci95"] for s in stats])
        pos = x + (i - (len(tasks) - 1) / 2) * width
        ax.bar(pos, mean, width, label=task, yerr=[mean - ci[:, 0], ci[:, 1] - mean], capsize=3)
        for p, s in zip(pos, stats, strict=True):  # every seed's rate, so the spread is seen
            ax.plot([p] * len(s["rates"]), s["rates"], "k.", markersize=4)
    ax.set_xticks(x, arms, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (bars: pooled CI; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablation", help="ablation folder (rerun to resume)")
    p.add_argument("--preset", default="default", choices=PRESETS.names())
    p.add_argument("--seeds", type=int, default=None, help="training seeds per arm (preset's if unset)")
    p.add_argument("--arms", default=None, help=f"comma-separated subset of {','.join(ALL_ARMS)}")
    p.add_argument("--jobs", type=int, default=2, help="trainings/evaluations at once, one thread each")
    return p


@command("python -m benchmarks.ablation")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = PRESETS.get(args.preset)
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    if args.arms:
        cfg = replace(cfg, arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()))
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}  # fmt: skip
    started = time.time()

    data, shards = data_steps(cfg, out / "data")
    data_ran = False  # then every step after it reads data that changed: it runs again too
    for folder, step in data.items():  # one after the other: the curations read the sources
        data_ran |= run_step(folder, step, env, stale=data_ran)
        log(f"{folder.relative_to(out)}: " + ("finished" if data_ran else "done before, skipped"))

    pretrains = {}
    for arm in cfg.arms:
        pre_data = arm_recipe(arm)[0]
        for seed in range(cfg.seeds if pre_data else 0):
            folder = out / "pretrain" / pre_data / f"seed{seed}"
            pretrains[folder] = Step([py("pipelines.pretrain", "--preset", cfg.model, "--train-preset", cfg.train_preset,
                                    "--steps", str(cfg.pretrain_steps), *train_args(cfg, shards[pre_data], seed),
                                    "--out", str(folder))])  # fmt: skip
    cells = {
        out / "cells" / arm / f"seed{seed}": cell_step(cfg, out, shards, arm, seed)
        for arm in cfg.arms
        for seed in range(cfg.seeds)
    }
    reads = {  # the pretraining each cell starts from
        out / "cells" / arm / f"seed{seed}": out / "pretrain" / str(arm_recipe(arm)[0]) / f"seed{seed}"
        for arm in cfg.arms
        for seed in range(cfg.seeds)
    }
    ran_now: set[Path] = set()
    steps = [*pretrains.items(), *cells.items()]
    lock, finished = threading.Lock(), [0]

    def one(item: tuple[Path, Step]) -> None:
        folder, step = item
        ran = run_step(folder, step, env, stale=data_ran or reads.get(folder) in ran_now)
        with lock:
            if ran:
                ran_now.add(folder)
            finished[0] += 1
            elapsed = time.time() - started
            log(f"{finished[0]}/{len(steps)} {folder.relative_to(out)}: "
                f"{'finished' if ran else 'done before, skipped'} ({elapsed / 60:.1f} min so far)")  # fmt: skip

    # every pretraining before any fine-tune that starts from it
    for group in (pretrains.items(), cells.items()):
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, group))

    summary = summarise(cfg, out)
    summary["wall_seconds_this_invocation"] = time.time() - started
    # what the whole ablation cost, however many reruns it took: each step's own wall time
    summary["step_seconds"] = {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["seconds"]
        for p in sorted(out.rglob("done.json"))
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "ablation.md")
    plot(summary, out / "ablation.png")
    log(
        f"wrote {out / 'ablation.md'}, ablation.png and ablation.json in {(time.time() - started) / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
