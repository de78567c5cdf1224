"""Phase 4, statistics: the kept episodes' sketches → 1 ``EmbodimentStats`` per embodiment (N:1).

Each episode's sketch (a serialised :class:`curation.stages.stats.StatsAccumulator` of the
windows it emitted) was made in the episodes phase and saved in its part's metadata, so no
row is read again here. They are merged in discovery order, leaving the near-duplicates
out: the statistics do not depend on how the episodes were cut into parts.
"""

from __future__ import annotations

from pathlib import Path

from curation.parts import iter_sketches
from curation.stages.stats import StatsAccumulator
from schemas import EmbodimentStats
from schemas.normalize import NormConfig


def merge_sketches(
    parts: list[Path], norm: NormConfig, exclude: frozenset[str] = frozenset()
) -> dict[str, EmbodimentStats]:
    """Merge the episodes' sketches per embodiment in discovery order (deterministic whatever
    the cut into parts), leaving out the episodes in ``exclude`` (near-duplicates)."""
    merged: dict[str, StatsAccumulator] = {}
    for path in parts:
        for record, blob in iter_sketches(path):
            if blob is None or record["episode_id"] in exclude:
                continue
            acc = StatsAccumulator.from_bytes(blob)
            merged[acc.embodiment] = merged[acc.embodiment].merge(acc) if acc.embodiment in merged else acc
    return {emb: acc.finalize(norm) for emb, acc in sorted(merged.items())}
