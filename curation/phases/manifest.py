"""Phase 6, manifest: counts, statistics, shards and ledger → 1 manifest, written last; on the driver.

The manifest's counts balance (``Manifest.validate``): every input is in the shards or in
the ledger, stage by stage. The ledger (``meta/rejections.parquet``) holds every rejection,
sorted by stage, path, episode and window; the manifest, written after it, marks the run
finished (:mod:`curation.shards`). Each source is recorded once (a path given twice is one
entry) with its format, a content digest and all its inputs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from curation.job import CODE_VERSION, CurateJob
from curation.phases.dedup import Outcome
from curation.shards import LEDGER_PATH, atomic_write_table, write_manifest
from schemas import EmbodimentStats, Manifest, ShardInfo, SourceInput, to_table


def build_manifest(
    job: CurateJob,
    found: dict[str, Any],
    outcome: Outcome,
    stats: dict[str, EmbodimentStats],
    shards: list[ShardInfo],
    text: dict[str, Any] | None = None,
    latents: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a finished run: the episode counts, every stage's in/out/rejected,
    the statistics, the sources, the shards and the ledger."""
    samples = sum(s.rows for s in shards)
    episode_rejections = [r for r in outcome.rejections if r.window < 0]
    counts = {
        "episodes_in": outcome.stage_counts["ingest"]["in"],
        "episodes_with_samples": outcome.episodes_with_samples,
        "episodes_rejected": len(episode_rejections),
        "windows_in": outcome.windows_in,
        "samples": samples,
        "windows_rejected": outcome.window_rejections,
        **outcome.without_actions,
    }
    stage_counts = dict(outcome.stage_counts)
    stage_counts["windows"] = {
        "in": outcome.windows_in,
        "out": samples,
        "rejected": outcome.window_rejections,
    }
    stage_counts["caption"] = {"in": samples, "out": samples, "rejected": 0}
    sources = tuple(
        SourceInput(
            path,
            found["source_formats"].get(path, "unknown"),
            source_digest(path),
            found["source_inputs"].get(path, 0),  # all its inputs, a repeat's rejection with them
        )
        for path in dict.fromkeys(s.path for s in job.sources)  # a path given twice: one entry
    )
    return Manifest(
        code_version=CODE_VERSION,
        config={**job.content_config(), "digest": job.digest()},
        counts=counts,
        stats=stats,
        sources=sources,
        shards=tuple(shards),
        rejections=tuple(sorted(outcome.rejections, key=lambda r: (r.stage, r.path, r.episode, r.window))),
        stage_counts=stage_counts,
        text=text,
        latents=latents,
    )


def write_ledger_and_manifest(out: Path, manifest: Manifest) -> None:
    """The ledger (when anything was rejected), then the manifest: its presence means done."""
    if manifest.rejections:
        atomic_write_table(out / LEDGER_PATH, to_table(list(manifest.rejections)))
    write_manifest(out, manifest)


def source_digest(path: str) -> str:
    """sha256 over every file of a source (relative path + content), in sorted order."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode())
        try:
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as err:
            h.update(f"<unreadable: {err.strerror}>".encode())
    return h.hexdigest()
