"""The curation job's phases, one module each, in the order :func:`curation.pipeline.run` calls
them, with the row cardinality of each::

    output      the output folder → reused (same config), refused (another config or schema
                major) or a fresh ``.work`` folder; driver
    discover    1 source → N episode refs, metadata only (a source that cannot be listed, or
                one given twice → 1 rejection); the refs cut into parts of consecutive
                episodes; driver, saved in ``.work/discover.json``
    episodes    1 part of N refs → 1 part file: per episode load → filters → decode →
                compose → window → encode (1 episode → its samples, 1:N; its record,
                fingerprint and stats sketch, 1:1) → captions; one Ray task per part
    dedup       every episode record → near-duplicate rejections (N:1 over fingerprints)
                and the per-stage accounting; driver
    statistics  the kept episodes' sketches, in discovery order → 1 EmbodimentStats per
                embodiment (N:1); driver
    pack        the parts' kept rows, in order → shards of a target size (1 raw row → 1
                normalised, validated Sample row); one Ray task per shard
    manifest    counts, stats, shards and ledger → 1 manifest (written last) + the ledger;
                driver

The work part (:mod:`curation.parts`) hands the episodes phase's output to the later
phases; the output folder's layout and atomic writes are :mod:`curation.shards`'.
"""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[curate {time.strftime('%H:%M:%S')}] {msg}", flush=True)
