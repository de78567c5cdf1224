"""Data report of a curated dataset: a Markdown page with PNG plots.

Reads only the finished dataset (shards + manifest), so it can be rebuilt at any time:

* action and state distributions per embodiment and dimension (histograms of the
  normalised values, with the ±1 quantile bounds marked),
* rejection reasons per stage,
* a grid of sample frames (observation + future frames) with instruction and caption,
* the stage-by-stage accounting table.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq

from curation.shards import REPORT_DIR, read_manifest
from schemas import get_embodiment
from schemas.frames import decode_sample_frames


def _load_rows(out: Path, max_rows: int) -> list[dict]:
    rows: list[dict] = []
    for path in sorted((out / "data").glob("shard-*.parquet")):
        rows += pq.read_table(path).to_pylist()
        if len(rows) >= max_rows:
            break
    return rows[:max_rows]


def plot_distributions(rows: list[dict], key: str, path: Path) -> bool:
    by_emb: dict[str, list[np.ndarray]] = defaultdict(list)
    masks: dict[str, np.ndarray] = {}
    for r in rows:
        values = np.asarray(r[key], dtype=np.float32).reshape(-1, 32)
        by_emb[r["embodiment"]].append(values)
        masks[r["embodiment"]] = np.asarray(r[f"{key}_mask"], dtype=bool)
    if not by_emb:
        return False
    n_rows = sum(int(m.sum()) for m in masks.values())
    cols = 4
    fig, axes = plt.subplots(
        max(1, -(-n_rows // cols)), cols, figsize=(3.2 * cols, 2.2 * max(1, -(-n_rows // cols)))
    )
    axes = np.atleast_1d(axes).ravel()
    i = 0
    for emb, chunks in sorted(by_emb.items()):
        spec = get_embodiment(emb)
        names = spec.action_names if key == "action" else spec.state_names
        values = np.concatenate(chunks)
        for d in np.flatnonzero(masks[emb]):
            ax = axes[i]
            ax.hist(values[:, d], bins=50, color="tab:blue", alpha=0.8)
            ax.axvline(-1, color="tab:red", lw=0.8, ls="--")
            ax.axvline(1, color="tab:red", lw=0.8, ls="--")
            ax.set_title(f"{emb}: {names[d] if d < len(names) else d}", fontsize=8)
            ax.tick_params(labelsize=6)
            i += 1
    for ax in axes[i:]:
        ax.axis("off")
    fig.suptitle(f"normalised {key} per embodiment and dimension (dashed: q01/q99 → ±1)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_rejections(manifest, path: Path) -> bool:
    counts = Counter(f"{r.stage}: {r.reason}" for r in manifest.rejections)
    if not counts:
        return False
    labels, values = zip(*sorted(counts.items(), key=lambda kv: -kv[1]), strict=True)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(labels) + 1))
    ax.barh(labels, values, color="tab:orange")
    ax.invert_yaxis()
    ax.set_xlabel("rejected inputs")
    ax.set_title("rejection reasons")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_sample_grid(rows: list[dict], path: Path, n: int = 6) -> bool:
    if not rows:
        return False
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    strips = [decode_sample_frames(r["video"], r["video_format"]) for r in picked]
    k = max(s.shape[0] for s in strips)
    fig, axes = plt.subplots(len(picked), k, figsize=(1.9 * k, 2.2 * len(picked)), squeeze=False)
    for i, (r, frames) in enumerate(zip(picked, strips, strict=True)):
        for j in range(k):
            ax = axes[i, j]
            ax.axis("off")
            if j < frames.shape[0]:
                ax.imshow(frames[j])
                ax.set_title("t" if j == 0 else f"t+{j}Δ", fontsize=7)
        text = r["instruction"] + (f" | caption: {r['caption']}" if r["caption"] else "")
        axes[i, 0].text(0, -0.25, text[:90], transform=axes[i, 0].transAxes, fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(out: str | Path, max_rows: int = 2000) -> Path:
    out = Path(out)
    manifest = read_manifest(out)
    rows = _load_rows(out, max_rows)
    rdir = out / REPORT_DIR
    rdir.mkdir(parents=True, exist_ok=True)
    lines = ["# Curated dataset report", ""]
    c = manifest.counts
    lines += [
        f"- episodes in: {c['episodes_in']} → with samples: {c['episodes_with_samples']}, "
        f"rejected: {c['episodes_rejected']}",
        f"- windows in: {c.get('windows_in', 0)} → samples: {c.get('samples', 0)}, "
        f"rejected: {c.get('windows_rejected', 0)}",
        f"- shards: {len(manifest.shards)} ({sum(s.bytes for s in manifest.shards) / 2**20:.1f} MiB)",
        f"- sources: {len(manifest.sources)}; embodiments: {', '.join(sorted(manifest.stats))}",
        "",
        "## Accounting by stage",
        "",
        "| stage | in | out | rejected |",
        "|---|---|---|---|",
    ]
    order = ["ingest", "filter", "dedup", "decode", "window", "latents", "windows", "caption"]
    stages = sorted(manifest.stage_counts, key=lambda k: (order.index(k) if k in order else len(order), k))
    for stage in stages:
        sc = manifest.stage_counts[stage]
        lines.append(f"| {stage} | {sc.get('in', '')} | {sc.get('out', '')} | {sc.get('rejected', '')} |")
    lines.append("")
    for title, fname, ok in (
        ("Action distributions", "actions.png", plot_distributions(rows, "action", rdir / "actions.png")),
        ("State distributions", "states.png", plot_distributions(rows, "state", rdir / "states.png")),
        ("Rejection reasons", "rejections.png", plot_rejections(manifest, rdir / "rejections.png")),
        ("Sample frames", "samples.png", plot_sample_grid(rows, rdir / "samples.png")),
    ):
        if ok:
            lines += [f"## {title}", "", f"![{title}]({fname})", ""]
    if manifest.rejections:
        lines += [
            "## Rejection ledger (first 50)",
            "",
            "| stage | reason | file | episode | detail |",
            "|---|---|---|---|---|",
        ]
        for r in manifest.rejections[:50]:
            lines.append(f"| {r.stage} | {r.reason} | {Path(r.path).name} | {r.episode} | {r.detail[:80]} |")
    path = rdir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
