"""The curation job's phases, one module each, in the order :func:`curation.pipeline.run` calls them
(its comments give each phase's row cardinality; each module's docstring the detail)::

    output      what the output folder already holds: reuse, refuse, or a fresh .work (driver)
    discover    sources → episode refs, cut into parts (driver)
    episodes    parts of refs → part files (one Ray task per part, + caption actors)
    dedup       episode records → near-duplicates and the stage accounting (driver)
    statistics  the kept episodes' sketches → statistics per embodiment (driver)
    pack        the parts' kept rows → normalised, validated shards (one Ray task per shard)
    manifest    counts, statistics, shards, ledger → the manifest, written last (driver)

The work part (:mod:`curation.parts`) hands the episodes phase's output to the later
phases; the output folder's layout and atomic writes are :mod:`curation.shards`'.
"""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[curate {time.strftime('%H:%M:%S')}] {msg}", flush=True)
