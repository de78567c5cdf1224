"""Curate validated episodes in one process, without Ray or filters: a shard folder for tests,
benchmarks and small experiments.

The same pure functions as the Ray job (:mod:`curation.pipeline`, :mod:`curation.phases`), in the
same order: each episode's windows → composed, encoded frames (no captions); one statistics
sketch per episode merged in order; normalised shards; the instructions' token states from the
preset's text encoder (``hashed`` unless a factory is given); with ``latents``, every sample's
stored latents from the codec ``latent_encoder`` builds (:mod:`curation.latents`); a manifest. Deterministic
for deterministic episodes (PNG frames). The filters do not run: every episode must give at
least one window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from curation.config import get_preset
from curation.episode_samples import assemble_part, episode_sample_rows, episode_table
from curation.latents import apply_latents, encode_rows, latents_entry
from curation.parts import part_path, write_part
from curation.phases.pack import write_shards
from curation.phases.statistics import merge_sketches
from curation.shards import WORK_DIR, write_manifest
from curation.text_embeddings import embed_instructions, make_text_encoder
from schemas import Episode, Manifest
from schemas.latents import LatentConfig, LatentEncoderFactory
from schemas.text import TextEncoderConfig, TextEncoderFactory


def curate_in_memory(
    episodes: Sequence[Episode],
    out: Path,
    preset: str = "debug",
    text: TextEncoderConfig | None = None,
    text_encoder: TextEncoderFactory | None = None,
    latents: LatentConfig | None = None,
    latent_encoder: LatentEncoderFactory | None = None,
) -> Path:
    """``out`` as a curated shard folder (``data/*.parquet`` + ``meta/``); ``text`` replaces the
    preset's text encoder, built by ``text_encoder`` (needed for any but ``hashed``); ``latents``
    stores every sample's latents, made by the codec ``latent_encoder`` builds (a sample it cannot
    encode is an error here: there is no ledger)."""
    cfg = get_preset(preset)
    if text is not None:
        cfg = cfg.replace(text=text)
    if not episodes:
        raise ValueError("curate_in_memory: no episodes")
    out = Path(out)
    table, records, sketches = assemble_part((_rows(ep, cfg, preset) for ep in episodes), cfg.norm.sketch_k)
    stored = None
    if latents is not None:
        if latent_encoder is None:
            raise ValueError("curate_in_memory: latents need a latent_encoder factory")
        codec = latent_encoder(latents, "cpu")
        rows = table.to_pylist()
        results = encode_rows(rows, codec, latents.batch_size)
        failed = [
            (r["sample_id"], res) for r, res in zip(rows, results, strict=True) if isinstance(res[0], str)
        ]
        if failed:
            raise ValueError(f"curate_in_memory: sample {failed[0][0]} cannot be encoded: {failed[0][1]}")
        rows, records, sketches = apply_latents(rows, records, sketches, results, cfg.norm.sketch_k)
        table = episode_table(rows)
        w, v = cfg.windows, cfg.video
        stored = latents_entry(codec, w.num_future + 1, v.height, v.width)
    part = part_path(out / WORK_DIR, 0)
    write_part(part, table, records, sketches)
    stats = merge_sketches([part], cfg.norm)
    shards = write_shards(out, [part], stats, cfg, use_ray=False)
    n = table.num_rows
    manifest = Manifest(
        code_version="in-memory",
        config={"curation": cfg.to_dict(), "caption": None},
        counts={
            "episodes_in": len(episodes),
            "episodes_with_samples": len(episodes),
            "episodes_rejected": 0,
            "windows_in": n,
            "samples": n,
            "windows_rejected": 0,
        },
        stats=stats,
        sources=(),
        shards=tuple(shards),
        rejections=(),
        text=embed_instructions(out, shards, make_text_encoder(cfg.text, text_encoder)),
        latents=stored,
    )
    write_manifest(out, manifest)
    return out


def _rows(ep: Episode, cfg, preset: str) -> tuple[list[dict], dict]:
    rows, _, _ = episode_sample_rows(ep, cfg, {})
    if not rows:
        raise ValueError(
            f"curate_in_memory: episode {ep.episode_id} ({ep.length} steps) gives no window "
            f"with the {preset!r} preset"
        )
    return rows, {"episode_id": ep.episode_id}
