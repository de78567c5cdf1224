"""``gwp demo`` — every stage end to end on the embedded default data, then one report.

    gwp demo --out runs/demo                      # the README's main command (`make demo`)
    gwp demo --out runs/smoke --preset smoke      # a minutes-long version (used by the tests)

Stages, each a separate process running the same command a user would type, each skipped
when it already finished with the same settings (a ``.done`` marker with its commands and
wall time), so a rerun resumes where an interrupted one stopped, and a stage whose settings
changed starts over together with every stage after it:

1. ``generate``   Meta-World expert demonstrations (``gwp generate-sim``), half of the seeds
                  written as LeRobot v3.0, the other half converted to RLDS (``gwp convert``)
                  so that ingestion really mixes two source formats; with
                  ``pretrain_video_tasks`` set, also the video of other tasks' expert runs
                  without actions (``--no-actions``: raw video, a third source);
2. ``curate``     Ray Data curation of the sources into shards + manifest + data report;
3. ``pretrain``   DeepSpeed pretraining of the action-conditioned video model (on the
                  action-free video too: its rows train the video loss alone; the fine-tunes
                  leave them out);
4. ``finetune``   DeepSpeed fine-tuning of the policy from the pretrained weights (λ_v = 1);
5. ``finetune_no_video``  the same with the video loss off (λ_v = 0), for comparison;
6. ``evaluate``   closed loop on held-out seeds: both policies, the scripted expert, random;
7. ``evaluate_openloop``  the policy on the episodes its fine-tune held out: action error per
                  dim, predicted vs real future frames (PSNR/SSIM and a picture);
8. ``report``     ``REPORT.md`` linking every stage's output, with loss curves and pictures;
9. ``publish``    dataset and policy to the Hub, when ``--repo-prefix`` and a token are given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from curation.config import CurationConfig, VideoCodec, get_preset
from pipelines.config_flags import add_field_flags, field_overrides, name_flag
from pipelines.usage import ArgumentParser, JobFailed, UsageError, command
from pretrain.config import MODEL_PRESETS, get_model_config
from pretrain.run_config import get_train_config
from schemas.config import ConfigError, check_choices
from schemas.registry import Registry
from schemas.version import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoTraining:
    """Both trainings of the demo: the pretraining, then the two fine-tunes (λ_v = 1 and 0)."""

    model: str = "debug"  # model preset (pretrain/config.py)
    train_preset: str = "demo"  # train preset (pretrain/run_config.py), both trainings
    pretrain_steps: int = 200
    finetune_steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    heldout_fraction: float = 0.1  # of the fine-tune's episodes, for its held-out loss and open-loop eval
    eval_every: int | None = 500  # fine-tune steps between held-out evaluations (None: only at the end)

    def __post_init__(self) -> None:
        # a misspelt preset fails when the demo starts, with the registry's "did you mean", not an hour in
        get_model_config(self.model)
        get_train_config(self.train_preset)
        for name in ("pretrain_steps", "finetune_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError("DemoTraining", name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(
                "DemoTraining", "heldout_fraction", f"must be in [0, 1), got {self.heldout_fraction}"
            )

    def finetune_args(self) -> list[str]:
        every = [] if self.eval_every is None else ["--eval-every", str(self.eval_every)]
        return ["--heldout-fraction", str(self.heldout_fraction), *every]


@dataclass(frozen=True)
class DemoConfig:
    name: str
    tasks: tuple[str, ...]
    episodes_per_task: int  # per source format (two formats → twice as many demonstrations)
    image_size: int
    codec: VideoCodec = "h264"  # of the LeRobot v3.0 half: the codec the RLDS half was converted from, too
    curation: CurationConfig = field(default_factory=lambda: get_preset("debug"))  # the job's "curation"
    train: DemoTraining = field(default_factory=DemoTraining)
    eval_episodes: int = field(default=50, metadata={"help": "closed-loop episodes per task and policy"})
    replan_every: int = 4
    eval_max_steps: int = 200
    workers: int = 2
    threads: int = 1  # torch threads per training process: more spin against other work (BENCHMARKS.md)
    openloop_samples: int = 256  # held-out samples in the open-loop evaluation
    pretrain_video_tasks: tuple[str, ...] = field(
        default=(),
        metadata={"help": "more Meta-World tasks whose video, without actions, only pretraining sees"},
    )
    pretrain_video_episodes: int = field(
        default=10, metadata={"help": "expert episodes per pretrain_video_tasks task (video only)"}
    )

    def __post_init__(self) -> None:
        check_choices(self, f"demo preset {self.name!r}")
        if self.pretrain_video_episodes < 1:
            raise ConfigError(
                "DemoConfig", "pretrain_video_episodes", f"must be >= 1, got {self.pretrain_video_episodes}"
            )
        overlap = sorted(set(self.pretrain_video_tasks) & set(self.tasks))
        if overlap:  # the policy's own tasks have their demonstrations, with actions, already
            raise ConfigError(
                "DemoConfig", "pretrain_video_tasks", f"{overlap} are the policy's tasks already"
            )


# The default recipe; its wall time and held-out success rates are in BENCHMARKS.md, "The demo".
# Fine-tunes of a fifth of its steps left the policy undertrained.
PRESETS: Registry[DemoConfig] = Registry("demo preset")
_DEBUG = get_preset("debug")
PRESETS.register(
    "default",
    DemoConfig(
        name="default",
        tasks=("drawer-open-v3", "button-press-topdown-v3"),
        episodes_per_task=30,
        image_size=64,
        curation=replace(
            _DEBUG,
            windows=replace(_DEBUG.windows, chunk=8, frame_stride=4, num_future=2, stride=2),
            video=replace(_DEBUG.video, width=64, height=64),
        ),
    ),
)
PRESETS.register(
    "smoke",
    DemoConfig(
        name="smoke",
        tasks=("drawer-open-v3", "button-press-topdown-v3"),
        episodes_per_task=2,
        image_size=64,
        train=DemoTraining(
            train_preset="debug",
            pretrain_steps=4,
            finetune_steps=4,
            batch_size=4,
            lr=3e-4,
            heldout_fraction=0.25,
            eval_every=None,
        ),
        # one seed per task, but long enough for the scripted expert (60-95 steps on these tasks):
        # with fewer, every policy scores 0 and the comparison orders nothing
        eval_episodes=1,
        eval_max_steps=120,
        workers=1,
        openloop_samples=16,
    ),
)


# DemoConfig fields a flag may override
DEMO_FLAGS = ("eval_episodes", "pretrain_video_tasks", "pretrain_video_episodes")


def get_demo_config(name: str) -> DemoConfig:
    """The preset called ``name``; an unknown one is the registries' ``UnknownNameError``."""
    return PRESETS.get(name)


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Stages:
    """Runs stages as subprocesses, skipping finished ones, and records their wall times.

    A stage is skipped when its marker says it finished with the same commands (and the same
    ``inputs``: e.g. the curation job's content) under the same schema version, and no earlier
    stage ran in this invocation.
    Otherwise its ``outputs`` are removed first when it had finished before under other
    settings (a stale result must not be resumed from), and kept when it had not finished
    (an interrupted stage resumes: the trainers continue from their last checkpoint).
    """

    def __init__(self, out: Path):
        self.out = out
        self.times: dict[str, float] = {}
        self.upstream_ran = False

    def marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.done"

    def run(
        self,
        name: str,
        commands: list[list[str]],
        env: dict[str, str] | None = None,
        outputs: tuple[Path, ...] = (),
        inputs: object = None,
    ) -> None:
        marker = self.marker(name)
        inputs = json.loads(json.dumps(inputs))  # as the marker stores it (tuples become lists)
        if marker.exists():
            record = json.loads(marker.read_text())
            same = (
                record.get("commands") == commands
                and record.get("inputs") == inputs
                and record.get("schema") == SCHEMA_VERSION  # data of another schema is not reused
            )
            if same and not self.upstream_ran:
                self.times[name] = record["seconds"]
                log(f"{name}: done before ({record['seconds']:.0f} s), skipped")
                return
            why = "an earlier stage ran again" if same else "its settings changed"
            log(f"{name}: finished before, but {why}: starting over")
            for path in outputs:
                shutil.rmtree(path, ignore_errors=True)
            marker.unlink()
        self.upstream_ran = True
        log(f"{name}: starting")
        start = time.time()
        for cmd in commands:
            log("  $ " + " ".join(cmd))
            result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=False)
            if result.returncode != 0:
                raise JobFailed(f"stage {name} failed (exit {result.returncode}): {' '.join(cmd)}")
        seconds = time.time() - start
        self.times[name] = seconds
        marker.parent.mkdir(parents=True, exist_ok=True)
        record = {"seconds": seconds, "commands": commands, "inputs": inputs, "schema": SCHEMA_VERSION}
        marker.write_text(json.dumps(record))
        log(f"{name}: finished in {seconds:.0f} s")


def py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="demo folder (rerun to resume)")
    name_flag(p, "--preset", PRESETS, default="default", help="demo size")
    p.add_argument(
        "--repo-prefix", default=None, help="publish to <prefix>-data and <prefix>-policy on the Hub"
    )
    add_field_flags(p, DemoConfig, DEMO_FLAGS)  # --eval-episodes
    name_flag(p, "--model", MODEL_PRESETS, help="model preset of both trainings (default: the preset's)")
    return p


@command("gwp demo")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repo_prefix and not os.environ.get("HF_TOKEN"):  # refused before the long run, not after
        raise UsageError("--repo-prefix needs a Hub token in HF_TOKEN")
    cfg = get_demo_config(args.preset)
    cfg = replace(cfg, **field_overrides(args, DemoConfig, DEMO_FLAGS))
    if args.model is not None:
        cfg = replace(cfg, train=replace(cfg.train, model=args.model))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    st = Stages(out)
    started = time.time()
    env = {
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    tasks = ",".join(cfg.tasks)
    src_a, src_b = out / "sources" / "lerobot_v3", out / "sources" / "rlds"
    tmp_b = out / "sources" / ".second_half_lerobot"
    src_v = out / "sources" / "video_only"  # other tasks' video without actions, for pretraining
    n = cfg.episodes_per_task
    gen = [
        "--tasks",
        tasks,
        "--episodes-per-task",
        str(n),
        "--image-size",
        str(cfg.image_size),
        "--no-progress",
        "--workers",
        str(cfg.workers),
    ]
    generate = [
        py("pipelines.generate_sim", *gen, "--seed", "0", "--out", str(src_a), "--codec", cfg.codec,
           "--repo-id", "gwp-demo/sim-a"),
        py("pipelines.generate_sim", *gen, "--seed", "100000", "--out", str(tmp_b), "--codec", "h264",
           "--repo-id", "gwp-demo/sim-b"),
        py("pipelines.convert", str(tmp_b), "--to", "rlds", "--out", str(src_b)),
    ]  # fmt: skip
    sources = [str(src_a), str(src_b)]
    if cfg.pretrain_video_tasks:  # unset (the default): the commands and the job are as before
        generate.append(
            py("pipelines.generate_sim", "--tasks", ",".join(cfg.pretrain_video_tasks), "--episodes-per-task",
               str(cfg.pretrain_video_episodes), *gen[4:], "--seed", "200000", "--codec", "h264", "--no-actions",
               "--out", str(src_v))
        )  # fmt: skip
        sources.append(str(src_v))
    st.run("generate", generate, env, outputs=(src_a, tmp_b, src_b, src_v))

    shards = out / "shards"
    job = {
        "sources": sources,
        "out": str(shards),
        "curation": cfg.curation.to_dict(),
        "run": {"progress": False},
    }
    (out / "curate_job.json").write_text(json.dumps(job, indent=2))
    st.run("curate", [py("pipelines.curate", "--config", str(out / "curate_job.json"))], env, (shards,), job)

    tr = cfg.train
    train = ["--data", str(shards), "--batch-size", str(tr.batch_size), "--lr", str(tr.lr), "--no-progress",
             "--threads", str(cfg.threads)]  # fmt: skip
    pre = out / "pretrain"
    st.run(
        "pretrain",
        [py("pipelines.pretrain", "--preset", tr.model, "--train-preset", tr.train_preset, "--out", str(pre),
            "--steps", str(tr.pretrain_steps), *train)],
        env,
        outputs=(pre,),
    )  # fmt: skip
    ft = [
        "--preset",
        tr.train_preset,
        "--init",
        str(pre / "final"),
        "--steps",
        str(tr.finetune_steps),
        *train,
    ]
    pol, pol_nv = out / "policy", out / "policy_no_video"
    st.run("finetune", [py("pipelines.finetune", *ft, "--out", str(pol), *tr.finetune_args())], env, (pol,))
    st.run(
        "finetune_no_video",
        [py("pipelines.finetune", *ft, "--out", str(pol_nv), "--video-weight", "0", *tr.finetune_args())],
        env,
        outputs=(pol_nv,),
    )
    ev = out / "eval"
    st.run(
        "evaluate",
        [py("pipelines.evaluate", "--policy", f"gwp={pol / 'final'}", "--policy", f"gwp_no_video={pol_nv / 'final'}",
            "--policy", "expert", "--policy", "random", "--tasks", tasks, "--episodes", str(cfg.eval_episodes),
            "--replan-every", str(cfg.replan_every), "--max-steps", str(cfg.eval_max_steps),
            "--image-size", str(cfg.image_size), "--workers", str(cfg.workers), "--out", str(ev), "--no-progress")],
        env,
        outputs=(ev,),
    )  # fmt: skip
    st.run(
        "evaluate_openloop",
        [py("pipelines.evaluate_openloop", "--policy", str(pol / "final"), "--data", str(shards), "--split", "heldout",
            "--max-samples", str(cfg.openloop_samples), "--threads", str(cfg.threads), "--out", str(ev / "openloop"))],
        env,
        outputs=(ev / "openloop",),
    )  # fmt: skip
    report = write_demo_report(out, cfg, st.times, time.time() - started)
    log(f"report: {report}")
    if args.repo_prefix:
        st.run(
            "publish",
            [
                py("pipelines.publish", "dataset", str(shards), "--repo-id", f"{args.repo_prefix}-data"),
                py(
                    "pipelines.publish",
                    "model",
                    str(pol / "final"),
                    "--repo-id",
                    f"{args.repo_prefix}-policy",
                ),
            ],
        )
    return 0


def _plot_losses(runs: dict[str, Path], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    drawn = False
    for label, run in runs.items():
        metrics = run / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def write_demo_report(out: Path, cfg: DemoConfig, times: dict[str, float], total: float) -> Path:
    lines = [
        "# GigaWorld-Policy demo",
        "",
        f"Preset `{cfg.name}`: tasks {', '.join(cfg.tasks)}; {cfg.episodes_per_task} demonstrations per task "
        f"in each of two source formats (LeRobot v3.0, RLDS); model `{cfg.train.model}`.",
        "",
        *(
            [
                f"Pretraining also sees the video, without actions, of {cfg.pretrain_video_episodes} expert "
                f"runs per task of {', '.join(cfg.pretrain_video_tasks)} (raw video; the fine-tunes leave it out).",
                "",
            ]
            if cfg.pretrain_video_tasks
            else []
        ),
        "## Stages",
        "",
        "| stage | wall time (s) | output |",
        "|---|---|---|",
    ]
    outputs = {
        "generate": "sources/",
        "curate": "shards/meta/report/index.md",
        "pretrain": "pretrain/final/",
        "finetune": "policy/final/",
        "finetune_no_video": "policy_no_video/final/",
        "evaluate": "eval/comparison.md",
        "evaluate_openloop": "eval/openloop/openloop.md",
    }
    for name, rel in outputs.items():
        t = times.get(name)
        lines.append(f"| {name} | {'' if t is None else f'{t:.0f}'} | [{rel}]({rel}) |")
    lines += [f"| **total (this invocation)** | {total:.0f} | |", ""]
    runs = {
        "pretrain": out / "pretrain",
        "finetune (λ_v=1)": out / "policy",
        "finetune (λ_v=0)": out / "policy_no_video",
    }
    if _plot_losses(runs, out / "losses.png"):
        lines += ["## Training losses", "", "![losses](losses.png)", ""]
    comparison = out / "eval" / "comparison.md"
    if comparison.exists():
        body = "\n".join(
            line for line in comparison.read_text().splitlines() if not line.startswith("#")
        ).strip()
        lines += ["## Closed-loop evaluation", "", body, ""]
        sheet = out / "eval" / "gwp" / "contact_sheet.png"
        if sheet.exists():
            lines += [
                "Rollouts of the GWP policy (one row per recorded episode; videos in "
                "[eval/gwp/report.md](eval/gwp/report.md)):",
                "",
                "![GWP rollouts](eval/gwp/contact_sheet.png)",
                "",
            ]
    openloop = out / "eval" / "openloop" / "openloop.md"
    if openloop.exists():
        body = "\n".join(
            line.replace("](", "](eval/openloop/")
            if line.startswith("![")
            else "#" + line
            if line.startswith("## ")
            else line
            for line in openloop.read_text().splitlines()
            if not line.startswith("# ")
        )
        lines += ["## Open-loop evaluation on held-out episodes", "", body, ""]
    data_report = out / "shards" / "meta" / "report" / "index.md"
    if data_report.exists():
        rel = data_report.parent.relative_to(out)
        lines += [
            "## Data",
            "",
            f"The [data report]({rel}/index.md) has the rest; sample frames and actions:",
            "",
        ]
        lines += [
            f"![{name}]({rel}/{name}.png)"
            for name in ("samples", "actions")
            if (data_report.parent / f"{name}.png").exists()
        ]
        lines += [""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
