"""Phase 1, discover: 1 source → N episode refs (metadata only), cut into parts; on the driver.

A source that cannot be listed, or a dataset given a second time (the same path, or a copy:
the same content fingerprint, :mod:`curation.ingest`), is one input rejected at
``discover``. The refs keep source order, then each reader's order (discovery order, which
every later phase keeps). Their cut into parts of consecutive episodes (:func:`task_size`)
depends on the CPUs of the first run only; nothing downstream depends on it.

Saved in ``.work/discover.json`` (refs, part sizes, rejections, inputs and format per
source) so that a rerun lists nothing again and cuts the parts the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curation.formats import detect_format
from curation.ingest import discover
from curation.job import CurateJob
from curation.phases import log
from curation.shards import atomic_write_bytes


def discover_all(job: CurateJob, work: Path, cpus: int = 1) -> dict[str, Any]:
    """Phase 1, saved to ``.work/discover.json``: every episode ref (in source order, then the
    reader's order), their cut into parts (``parts``: episodes per part, see
    :func:`task_size`), and a rejection per source that cannot be listed; the inputs of each
    source are counted as they are listed (so an RLDS source, whose reader resolves to a
    version folder inside it, still counts under its configured path)."""
    path = work / "discover.json"
    if path.exists():
        saved = json.loads(path.read_text())
        log(f"phase 1 (discover): reusing {path} ({len(saved['refs'])} episodes)")
        return saved
    refs: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    source_inputs: dict[str, int] = {}
    seen: dict[str, str] = {}  # dataset id -> the source listed for it (a copy is one rejection)
    for spec in job.sources:
        found, rejected = discover(spec, seen)
        refs += [ref.to_row() for ref in found]
        rejections += [r.to_row() for r in rejected]
        source_inputs[spec.path] = source_inputs.get(spec.path, 0) + len(found) + len(rejected)
    per = task_size(job.run.episodes_per_task, len(refs), cpus)
    saved = {
        "refs": refs,
        "parts": [min(per, len(refs) - i) for i in range(0, len(refs), per)],
        "rejections": rejections,
        "source_inputs": source_inputs,
        "source_formats": {s.path: s.format or _safe_detect(s.path) for s in job.sources},
    }
    atomic_write_bytes(path, json.dumps(saved).encode())
    log(
        f"phase 1 (discover): {len(refs)} episodes in {len(job.sources)} sources, "
        f"{len(rejections)} unlistable or given twice"
    )
    return saved


def task_size(longest: int, episodes: int, cpus: int) -> int:
    """Episodes per part (Ray task): at most ``longest``, and few enough that each CPU gets one."""
    return max(1, min(longest, -(-episodes // max(1, cpus))))


def _safe_detect(path: str) -> str:
    try:
        return detect_format(path)
    except Exception:
        return "unknown"
