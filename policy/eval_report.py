"""Reports of closed-loop evaluations: JSON record, Markdown + HTML pages, contact sheet, comparison.

One evaluation (:class:`policy.eval_metrics.EvalResult`) becomes a folder::

    results.json        every number, per task and per episode (schema ``RESULTS_SCHEMA``)
    report.md           readable summary embedding the contact sheet, linking the videos
    report.html         the same page for a browser (videos inline)
    contact_sheet.png   one row per recorded rollout, frames sampled evenly from start to end,
                        framed green (success) or red (failure)
    videos/*.mp4        written by the evaluator

:func:`compare` puts several evaluations side by side (a trained policy beside the expert and
random baselines, or beside an ablation trained without the video loss) and says when their
settings differ, since success rates over different seeds or limits are not comparable.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy.eval_metrics import EvalResult, SheetRow
from policy.evaluate import EPISODE_STRIDE, EVAL_SEED_BASE, TRAIN_SEED_LIMIT

RESULTS_SCHEMA = "gwp-eval/1"
RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CONTACT_SHEET = "contact_sheet.png"
COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
# settings that must agree for success rates to be comparable
_COMPARABLE = ("tasks", "episodes", "seed", "max_steps", "image_size")

_GREEN, _RED = (40, 170, 60), (210, 40, 40)


# ---- JSON -------------------------------------------------------------------------------------
def result_record(result: EvalResult | dict[str, Any]) -> dict[str, Any]:
    """The JSON record of ``result`` (a dict loaded from ``results.json`` is returned as is)."""
    if isinstance(result, dict):
        if result.get("schema") != RESULTS_SCHEMA:
            raise ValueError(
                f"not an evaluation record (schema {result.get('schema')!r}, want {RESULTS_SCHEMA!r})"
            )
        return result
    from importlib.metadata import version

    return {
        "schema": RESULTS_SCHEMA,
        **result.to_dict(),
        "seeds": {
            "rule": "env seed = eval_base + seed * stride + episode index",
            "eval_base": EVAL_SEED_BASE,
            "stride": EPISODE_STRIDE,
            "training_seeds_below": TRAIN_SEED_LIMIT,
        },
        "environment": {
            "metaworld": version("metaworld"),
            "mujoco": version("mujoco"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }


def load_result(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` written by :func:`write_report` (a folder holding one is accepted)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read an evaluation record ({err})") from None
    try:
        return result_record(record)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ---- contact sheet ----------------------------------------------------------------------------
def contact_sheet(rows: Sequence[SheetRow], path: str | Path, title: str = "", min_height: int = 96) -> Path:
    """Write a PNG grid: one row per rollout, its sampled frames, success/failure marked.

    Frames are upscaled by an integer factor (nearest) to at least ``min_height`` pixels so
    that 64² renders stay readable.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("no recorded rollouts to put on a contact sheet (videos_per_task = 0?)")
    font = ImageFont.load_default()
    h, w = rows[0].frames_NHWC.shape[1:3]
    scale = max(1, math.ceil(min_height / h))
    fh, fw = h * scale, w * scale
    pad, border, header = 4, 3, 16
    n_cols = max(len(r.frames_NHWC) for r in rows)
    cell_w, cell_h = fw + 2 * border + pad, fh + 2 * border + header + pad
    title_h = 20 if title else 0
    sheet = Image.new("RGB", (pad + n_cols * cell_w, title_h + pad + len(rows) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y0 = title_h + pad + i * cell_h
        colour = _GREEN if row.success else _RED
        verdict = f"SUCCESS at step {row.length}" if row.success else f"FAILURE ({row.length} steps)"
        draw.text((pad, y0 + 2), f"{row.task}  seed {row.env_seed}  {verdict}", fill=colour, font=font)
        for j, (step, frame_HWC) in enumerate(zip(row.steps, row.frames_NHWC, strict=True)):
            x0, yf = pad + j * cell_w, y0 + header
            draw.rectangle([x0, yf, x0 + fw + 2 * border - 1, yf + fh + 2 * border - 1], fill=colour)
            big = np.repeat(np.repeat(frame_HWC, scale, axis=0), scale, axis=1)
            sheet.paste(Image.fromarray(big), (x0 + border, yf + border))
            label = f"t={step}"
            tw = int(draw.textlength(label, font=font))
            draw.rectangle([x0 + border, yf + border, x0 + border + tw + 3, yf + border + 11], fill=(0, 0, 0))
            draw.text((x0 + border + 2, yf + border), label, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


# ---- pages ------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] %"


def _sections(rec: dict[str, Any], sheet_file: str | None, out_dir: Path) -> list[tuple[str, Any]]:
    """The page as (kind, content) blocks, rendered to Markdown and to HTML alike."""
    cfg = rec["config"]
    n = len(rec["episodes"])
    blocks: list[tuple[str, Any]] = [
        ("h1", f"Closed-loop evaluation — {rec['policy']}"),
        (
            "p",
            f"Meta-World v3, {cfg['episodes']} episodes per task, env seeds {EVAL_SEED_BASE:,} + "
            f"{cfg['seed']}·{EPISODE_STRIDE:,} + i (never used for training data, whose seeds are below "
            f"{TRAIN_SEED_LIMIT:,}). Action chunks run open loop for {cfg['replan_every']} steps before the "
            f"next query; at most {cfg['max_steps']} steps per episode; success = Meta-World's "
            f"info['success']; {cfg['image_size']}² images; {cfg['workers']} env worker(s).",
        ),
        (
            "strong",
            f"Success {_pct(rec['success_rate'])} ({rec['successes']}/{n}), 95 % CI {_ci(rec['ci95'])}",
        ),
        ("h2", "Per task"),
        (
            "table",
            (
                [
                    "task",
                    "instruction",
                    "success",
                    "rate",
                    "95 % CI (Wilson)",
                    "mean length",
                    "mean length, successes",
                ],
                [
                    [
                        t["task"],
                        t["instruction"],
                        f"{t['successes']}/{t['episodes']}",
                        _pct(t["success_rate"]),
                        _ci(t["ci95"]),
                        f"{t['mean_length']:.1f}",
                        "—" if t["mean_success_length"] is None else f"{t['mean_success_length']:.1f}",
                    ]
                    for t in rec["tasks"].values()
                ],
            ),
        ),
        ("h2", "Latency and throughput"),
        (
            "table",
            (
                ["policy calls", "chunks", "p50 ms", "p95 ms", "mean ms", "max ms"],
                [
                    [
                        str(rec["policy_calls"]),
                        str(rec["chunks"]),
                        *(f"{rec['latency_ms'][k]:.2f}" for k in ("p50", "p95", "mean", "max")),
                    ]
                ],
            ),
        ),
        (
            "table",
            (
                ["eval episodes/s", "env steps/s", "rollout wall s", "start-up s", "workers"],
                [
                    [
                        f"{rec['episodes_per_s']:.3f}",
                        f"{rec['env_steps_per_s']:.1f}",
                        f"{rec['wall_s']:.2f}",
                        f"{rec['startup_s']:.2f}",
                        str(cfg["workers"]),
                    ]
                ],
            ),
        ),
    ]
    if sheet_file:
        blocks += [("h2", "Rollouts"), ("img", sheet_file)]
    videos = [(e["task"], e["index"], e["success"], e["video"]) for e in rec["episodes"] if e["video"]]
    if videos:
        blocks.append(
            (
                "videos",
                [
                    (f"{task} episode {i} ({'success' if ok else 'failure'})", os.path.relpath(v, out_dir))
                    for task, i, ok, v in videos
                ],
            )
        )
    return blocks


# The blocks whose content is one string, as each page writes it: (Markdown, HTML) per kind, side
# by side so that a kind is added to both pages at once. Tables and video lists have their writers.
_TEXT_BLOCKS = {
    "h1": ("# {}\n", "<h1>{}</h1>"),
    "h2": ("## {}\n", "<h2>{}</h2>"),
    "p": ("{}\n", "<p>{}</p>"),
    "strong": ("**{}**\n", "<p><strong>{}</strong></p>"),
    "img": ("![contact sheet]({})\n", '<img src="{}" alt="contact sheet">'),
}


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind in _TEXT_BLOCKS:
            out.append(_TEXT_BLOCKS[kind][0].format(content))
        elif kind == "table":
            out.append(_md_table(*content) + "\n")
        elif kind == "videos":
            out.append("Videos:\n\n" + "\n".join(f"* [{label}]({path})" for label, path in content) + "\n")
    return "\n".join(out)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html(blocks: list[tuple[str, Any]]) -> str:
    e = html.escape
    body: list[str] = []
    for kind, content in blocks:
        if kind in _TEXT_BLOCKS:
            body.append(_TEXT_BLOCKS[kind][1].format(e(content)))
        elif kind == "table":
            headers, rows = content
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            trs = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "videos":
            body.append(
                "<div class='videos'>"
                + "".join(
                    f"<figure><video src='{e(p)}' controls muted loop></video><figcaption>{e(label)}</figcaption></figure>"
                    for label, p in content
                )
                + "</div>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px}figure{display:inline-block;margin:4px}"
        "video{height:160px;image-rendering:pixelated}img{max-width:100%;image-rendering:pixelated}"
    )
    title = e(blocks[0][1])
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def write_report(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md``, ``report.html`` and ``contact_sheet.png`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = result_record(result)
    paths = {"json": out_dir / RESULTS_FILE, "markdown": out_dir / REPORT_MD, "html": out_dir / REPORT_HTML}
    sheet_file = None
    if result.sheet:
        n = len(result.episodes)
        title = f"{result.policy}: {result.successes}/{n} successes ({_pct(result.success_rate)})"
        paths["contact_sheet"] = contact_sheet(result.sheet, out_dir / CONTACT_SHEET, title=title)
        sheet_file = CONTACT_SHEET
    paths["json"].write_text(json.dumps(rec, indent=2) + "\n")
    blocks = _sections(rec, sheet_file, out_dir)
    paths["markdown"].write_text(_markdown(blocks))
    paths["html"].write_text(_html(blocks))
    return paths


# ---- comparison -------------------------------------------------------------------------------
def compare(results_list: Sequence[EvalResult | dict[str, Any]]) -> str:
    """A Markdown table of several evaluations, one row per policy, best overall in bold.

    Columns: overall success with its 95 % CI, success per task, latency p50/p95 per policy
    call, evaluation episodes/s. A note lists any setting that differs between the runs.
    """
    if not results_list:
        raise ValueError("nothing to compare")
    recs = [result_record(r) for r in results_list]
    tasks: list[str] = []
    for rec in recs:
        tasks += [t for t in rec["tasks"] if t not in tasks]
    best = max(rec["success_rate"] for rec in recs)
    headers = ["policy", "success (95 % CI)", *tasks, "latency p50 / p95 ms", "eval episodes/s"]
    rows = []
    for rec in recs:
        overall = f"{_pct(rec['success_rate'])} {_ci(rec['ci95'])}"
        if rec["success_rate"] == best and len(recs) > 1:
            overall = f"**{overall}**"
        per_task = [
            f"{_pct(rec['tasks'][t]['success_rate'])} ({rec['tasks'][t]['successes']}/{rec['tasks'][t]['episodes']})"
            if t in rec["tasks"]
            else "—"
            for t in tasks
        ]
        lat = rec["latency_ms"]
        rows.append(
            [
                rec["policy"],
                overall,
                *per_task,
                f"{lat['p50']:.2f} / {lat['p95']:.2f}",
                f"{rec['episodes_per_s']:.3f}",
            ]
        )
    lines = ["## Comparison\n", _md_table(headers, rows), ""]
    differing = [
        key
        for key in _COMPARABLE
        if len({json.dumps(rec["config"][key], sort_keys=True) for rec in recs}) > 1
    ]
    if differing:
        lines.append(f"**Not comparable:** the runs differ in {', '.join(differing)}.\n")
    else:
        cfg = recs[0]["config"]
        lines.append(
            f"Same {cfg['episodes']} seeded episodes per task for every policy (seed {cfg['seed']}, "
            f"at most {cfg['max_steps']} steps, {cfg['image_size']}² images).\n"
        )
    return "\n".join(lines)


def write_comparison(
    results_list: Sequence[EvalResult | dict[str, Any]], out_dir: str | Path
) -> dict[str, Path]:
    """``comparison.md`` (the :func:`compare` table) and ``comparison.json`` (the records) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = [result_record(r) for r in results_list]
    md, js = out_dir / COMPARISON_MD, out_dir / COMPARISON_JSON
    md.write_text("# Closed-loop evaluation\n\n" + compare(recs))
    js.write_text(json.dumps({"schema": RESULTS_SCHEMA, "results": recs}, indent=2) + "\n")
    return {"markdown": md, "json": js}
