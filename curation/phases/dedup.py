"""Phase 3, dedup + accounting: every episode record → near-duplicate rejections (N:1); on the driver.

Near-duplicate detection needs every fingerprint at once, so it runs after the episodes
phase, over the records of the episodes the filters passed
(:func:`curation.stages.filters.make_dedup_rejections`: the smallest id of a group is
kept). A duplicate's rows stay in its part and are left out by the later phases
(``Outcome.duplicates``). The same pass counts every stage's inputs, outputs and
rejections, so the manifest's counts balance: inputs = outputs + rejected, stage by stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.config import CurationConfig
from curation.parts import read_records
from curation.phases import log
from curation.stages.filters import make_dedup_rejections
from schemas import Rejection


@dataclass(frozen=True)
class Outcome:
    """Every episode's fate after the driver's N:1 duplicate stage, with the stage counts."""

    rejections: list[Rejection]
    duplicates: frozenset[str]
    stage_counts: dict[str, dict[str, int]]
    windows_in: int
    window_rejections: int
    episodes_with_samples: int
    # the action-free video among the kept episodes and their samples: subsets of
    # ``episodes_with_samples`` / the samples, not extra
    without_actions: dict[str, int]


def dedup_parts(
    parts: list[Path], found: dict[str, Any], cfg: CurationConfig, latents: bool = False
) -> Outcome:
    """The records of every part (in discovery order) and the discover rejections → :class:`Outcome`
    (``latents``: the job ran the latent stage, whose counts join the stages')."""
    records = [rec for p in parts for rec in read_records(p)]
    outcome = settle(records, [Rejection.from_row(r) for r in found["rejections"]], cfg, latents)
    log(f"phase 3 (dedup): {len(outcome.duplicates)} near-duplicate episodes dropped")
    return outcome


def settle(
    records: list[dict[str, Any]],
    discover_rejections: list[Rejection],
    cfg: CurationConfig,
    latents: bool = False,
) -> Outcome:
    """Dedup over the fingerprints of every episode the filters passed; then the accounting."""
    loaded = [r for r in records if r["stage"] != "load"]
    passed = [r for r in loaded if r["stage"] == "passed"]
    dup = make_dedup_rejections(passed, cfg.filters) if "duplicate" in cfg.filters.enabled else []
    dup_ids = frozenset(r.episode for r in dup)
    accepted = [r for r in passed if r["episode_id"] not in dup_ids]
    rejections = list(discover_rejections)
    for rec in records:
        if rec["stage"] != "passed" or rec["episode_id"] not in dup_ids:
            rejections += [Rejection.from_row(x) for x in rec["ledger"]]
    rejections += dup
    decode_rejected = sum(1 for r in accepted if r["outcome"] == "decode")
    with_samples = sum(1 for r in accepted if r["outcome"] == "samples")
    # episodes whose every window the latent stage rejected (curation.latents): windowed, not kept
    latent_rejected = sum(1 for r in accepted if r["outcome"] == "latents")
    windowed = with_samples + latent_rejected
    windows_in = sum(r["windows_in"] for r in accepted)
    window_rejections = sum(1 for r in accepted for x in r["ledger"] if x["window"] >= 0)
    inputs = len(records) + len(discover_rejections)
    counts = {
        "ingest": {"in": inputs, "out": len(loaded), "rejected": inputs - len(loaded)},
        "filter": {"in": len(loaded), "out": len(passed), "rejected": len(loaded) - len(passed)},
        "dedup": {"in": len(passed), "out": len(accepted), "rejected": len(dup)},
        "decode": {"in": len(accepted), "out": len(accepted) - decode_rejected, "rejected": decode_rejected},
        "window": {
            "in": len(accepted) - decode_rejected,
            "out": windowed,
            "rejected": len(accepted) - decode_rejected - windowed,
        },
    }
    if latents:
        counts["latents"] = {"in": windowed, "out": with_samples, "rejected": latent_rejected}
    return Outcome(
        rejections,
        dup_ids,
        counts,
        windows_in,
        window_rejections,
        with_samples,
        action_free_counts(records, dup_ids),
    )


def action_free_counts(records: list[dict[str, Any]], exclude: frozenset[str]) -> dict[str, int]:
    """How many of the episodes with samples, and of the samples, are action-free video (kept
    duplicates aside)."""
    kept = [r for r in records if r.get("action_free") and r["samples"] and r["episode_id"] not in exclude]
    return {"episodes_without_actions": len(kept), "samples_without_actions": sum(r["samples"] for r in kept)}
