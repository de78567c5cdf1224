"""``gwp demo`` — every stage end to end on the embedded default data, then one report.

    gwp demo --out runs/demo                      # the README's main command (`make demo`)
    gwp demo --out runs/smoke --preset smoke      # every stage at toy size, a few minutes
    gwp demo --out runs/order --preset ordering   # the smallest whose GWP beats random (the tests)
    gwp demo --out runs/demo16 --chunk 16         # the default with 16-action chunks (RTC at d = 8)

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
5. ``finetune_no_video``  the same with the video loss off (λ_v = 0), for comparison; it runs
                  at the same time as ``finetune``, one thread each: the two are independent,
                  and one of them alone leaves a core idle;
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
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipelines.config_flags import add_field_flags, field_overrides, name_flag
from pipelines.demo_config import DEMO_FLAGS, PRESETS, DemoConfig, get_demo_config
from pipelines.demo_report import write_demo_report
from pipelines.usage import ArgumentParser, JobFailed, UsageError, command
from pretrain.config import MODEL_PRESETS
from schemas.version import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


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
        self.run_together([Stage(name, commands, outputs, inputs)], env)

    def run_together(self, stages: list[Stage], env: dict[str, str] | None = None) -> None:
        """Runs independent stages at the same time (each one's commands in order), each with its
        own marker and wall time; a failed one fails the demo once the others have finished, so
        their work is kept for the rerun."""
        upstream_ran = self.upstream_ran  # the stages of a group do not depend on one another
        todo = [stage for stage in stages if not self._skip(stage, upstream_ran)]
        if not todo:
            return
        self.upstream_ran = True
        env = {**os.environ, **(env or {})}
        tag = len(todo) > 1  # interleaved output needs the stage's name on every line
        failures: list[str] = []

        def work(stage: Stage) -> None:
            log(f"{stage.name}: starting")
            start = time.time()
            for cmd in stage.commands:
                log(f"  {stage.name} $ " + " ".join(cmd) if tag else "  $ " + " ".join(cmd))
                try:
                    code = _call(cmd, env, prefix=f"[{stage.name}] " if tag else None)
                except OSError as e:  # raised in this thread, it would not reach the demo
                    failures.append(f"stage {stage.name} could not start {cmd[0]}: {e}")
                    return
                if code != 0:
                    failures.append(f"stage {stage.name} failed (exit {code}): {' '.join(cmd)}")
                    return
            seconds = time.time() - start
            self.times[stage.name] = seconds
            record = {"seconds": seconds, "commands": stage.commands, "inputs": stage.inputs,
                      "schema": SCHEMA_VERSION}  # fmt: skip
            self.marker(stage.name).parent.mkdir(parents=True, exist_ok=True)
            self.marker(stage.name).write_text(json.dumps(record))
            log(f"{stage.name}: finished in {seconds:.0f} s")

        threads = [threading.Thread(target=work, args=(stage,)) for stage in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise JobFailed("; ".join(failures))

    def _skip(self, stage: Stage, upstream_ran: bool) -> bool:
        """Whether ``stage`` finished before with the same settings; if it finished under other
        settings, its outputs are removed (a stale result must not be resumed from)."""
        marker = self.marker(stage.name)
        if not marker.exists():
            return False
        record = json.loads(marker.read_text())
        same = (
            record.get("commands") == stage.commands
            and record.get("inputs") == stage.inputs
            and record.get("schema") == SCHEMA_VERSION  # data of another schema is not reused
        )
        if same and not upstream_ran:
            self.times[stage.name] = record["seconds"]
            log(f"{stage.name}: done before ({record['seconds']:.0f} s), skipped")
            return True
        why = "an earlier stage ran again" if same else "its settings changed"
        log(f"{stage.name}: finished before, but {why}: starting over")
        for path in stage.outputs:
            shutil.rmtree(path, ignore_errors=True)
        marker.unlink()
        return False


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    outputs: tuple[Path, ...] = ()
    inputs: object = None

    def __post_init__(self) -> None:
        self.inputs = json.loads(json.dumps(self.inputs))  # as the marker stores it (tuples become lists)


def _call(cmd: list[str], env: dict[str, str], prefix: str | None) -> int:
    """Runs ``cmd``; with ``prefix``, its output goes line by line to ours with the prefix."""
    if prefix is None:
        return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(prefix + line, end="", flush=True)
    return proc.wait()


def py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="demo folder (rerun to resume)")
    name_flag(p, "--preset", PRESETS, default="default", help="demo size")
    p.add_argument(
        "--repo-prefix", default=None, help="publish to <prefix>-data and <prefix>-policy on the Hub"
    )
    add_field_flags(p, DemoConfig, DEMO_FLAGS)  # --eval-episodes, --chunk, ...
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
        "curation": cfg.curation_config().to_dict(),
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
    st.run_together(
        [
            Stage("finetune", [py("pipelines.finetune", *ft, "--out", str(pol), *tr.finetune_args())], (pol,)),
            Stage("finetune_no_video",
                  [py("pipelines.finetune", *ft, "--out", str(pol_nv), "--video-weight", "0", *tr.finetune_args())],
                  (pol_nv,)),
        ],
        env,
    )  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())
