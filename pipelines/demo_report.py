"""The demo's ``REPORT.md``: every stage's wall time and output, the loss curves, the closed- and
open-loop results and their pictures."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.demo_config import DemoConfig


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
        f"in each of two source formats (LeRobot v3.0, RLDS); model `{cfg.train.model}`, action chunk "
        f"P = {cfg.curation_config().windows.chunk}.",
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
    lines += [
        "The two fine-tunes run at the same time, one thread each, so the total is less than the sum "
        "of the stages; a stage skipped in this invocation shows the time it took when it ran.",
        "",
    ]
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
