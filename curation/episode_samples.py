"""Per-episode work: one episode reference in, its verdict and un-normalised sample rows out (1:1).

This is the heavy stage of curation, one pass per episode so that the episode is loaded once
and every frame is decoded once and resized once, whatever the filters and the window
geometry::

    load episode (by reference) → numeric filters → decode the quality camera (whole) →
    video filters + fingerprint on frames picked from it → window → decode the other cameras
    → compose the views of all T steps once ([T, H, W, 3]) → encode each window's 1+K
    composed frames (PNG: each composed frame is deflated once and the windows' PNGs are
    stacked from those pieces)

An episode a filter rejects is not decoded further (the numeric filters need no frames at
all). Near-duplicate detection needs every fingerprint (N:1), so it runs on the driver after
all episodes; the fingerprint travels in the episode's record and a duplicate's rows are
dropped there.

Normalisation needs statistics over the whole corpus, so rows here keep the *raw* action
chunk and state (``raw_action [p, Da]``, ``raw_state [Ds]``); the shard writer normalises
them. The result travels through Ray as one row per episode whose ``table`` column is the
episode's rows as Arrow IPC bytes: one fixed schema for every Ray block, however many
windows an episode has, and the episode's ledger travels with it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from curation.config import CurationConfig
from curation.formats import EpisodeRef
from curation.frames import decode_frames
from curation.ingest import _rejection, load
from curation.stages.compose import PngRows, compose_views, encode_frames, png_rows, stack_png
from curation.stages.filters import check_episode, fingerprint_to_hex
from curation.stages.text import text_embedding_fallback
from curation.stages.windowing import window_episode
from schemas import Episode, FrameRef, Rejection, Sample, get_embodiment
from schemas.sample import QUALITY_KEYS

# Sample columns that the shard stage computes (normalised) replace these raw ones.
RAW_SCHEMA = pa.schema(
    [f for f in Sample.arrow_schema() if f.name not in ("action", "action_mask", "state", "state_mask")]
    + [
        pa.field("raw_action", pa.list_(pa.list_(pa.float32()))),
        pa.field("raw_state", pa.list_(pa.float32())),
        pa.field("valid_steps", pa.int64()),
    ]
)


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


class EpisodeFrames:
    """The cameras of one episode, each decoded at most once and whole.

    :meth:`sampled` is a :data:`curation.stages.filters.FrameDecoder`: the filters' frames are
    picked from the whole decode, which the sample stage then reuses (decoding a whole short
    clip costs less than seeking to a handful of its frames)."""

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self._frames: dict[str, np.ndarray] = {}

    def all(self, role: str) -> np.ndarray:
        """uint8 [T, H, W, 3] of camera ``role``; LoadError when the video's length is not T."""
        if role not in self._frames:
            frames = decode_frames(self.episode.cameras[role])
            if frames.shape[0] != self.episode.length:
                raise_mismatch(self.episode, role, frames.shape[0])
            self._frames[role] = frames
        return self._frames[role]

    def sampled(self, ref: FrameRef, indices) -> np.ndarray:
        role = next((r for r, c in self.episode.cameras.items() if c is ref), None)
        if role is None:  # not one of this episode's cameras: decode it directly
            return decode_frames(ref, indices)
        return self.all(role)[list(indices)]


def episode_sample_rows(
    episode: Episode,
    cfg: CurationConfig,
    quality: dict[str, float],
    frames: EpisodeFrames | None = None,
) -> tuple[list[dict[str, Any]], list[Rejection], int]:
    """``(raw rows, window rejections, candidate windows)`` of one validated episode."""
    result = window_episode(episode, cfg.windows, quality)
    if not result.windows:
        return [], result.rejections, result.candidates
    frames = frames if frames is not None and frames.episode is episode else EpisodeFrames(episode)
    views = {role: frames.all(role) for role in episode.cameras}
    vc = cfg.video
    composed_THWC = compose_views(views, vc.width, vc.height, vc.fit)
    spec = get_embodiment(episode.embodiment)
    text_emb = text_embedding_fallback([episode.instruction])[0]
    rows = []
    png_cache: dict[int, PngRows] = {}  # each composed frame compressed once, whatever its windows
    for w in result.windows:
        if vc.format == "png":
            idx = list(w.camera_indices)
            video = stack_png(
                [png_cache.get(i) or png_cache.setdefault(i, png_rows(composed_THWC[i])) for i in idx]
            )
        else:
            frames = composed_THWC[list(w.camera_indices)]
            video = encode_frames(frames, vc.format, fps=w.frames_fps, codec=vc.codec, crf=vc.crf)
        rows.append(
            {
                "sample_id": w.sample_id,
                "episode_id": w.episode_id,
                "source": w.source,
                "embodiment": w.embodiment,
                "embodiment_id": spec.id,
                "start_frame": w.start_frame,
                "frame_indices": list(w.frame_indices),
                "instruction": w.instruction,
                "caption": "",
                "video": video,
                "video_format": vc.format,
                "height": vc.height,
                "width": vc.width,
                "quality": {k: w.quality.get(k) for k in QUALITY_KEYS},
                "text_embedding": text_emb.tolist(),
                "latent_shape": [],
                "raw_action": w.action.tolist(),
                "raw_state": w.state.tolist(),
                "valid_steps": w.valid_steps,
            }
        )
    return rows, result.rejections, result.candidates


def raise_mismatch(episode: Episode, role: str, got: int) -> None:
    from curation.formats import LoadError

    ref = episode.cameras[role]
    raise LoadError(
        "frame_count_mismatch",
        f"camera {role}: video has {got} frames, episode has {episode.length} steps",
        ref.path or episode.source_path,
        episode.episode_id,
    )


def process_episode(ref: EpisodeRef, cfg: CurationConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One episode, one pass: ``(raw sample rows, record)``.

    The record (JSON-safe) says how far the episode got, for the driver's accounting and
    near-duplicate stage: ``stage`` is ``"load"`` or ``"filter"`` (rejected there; ``ledger``
    holds the rejection) or ``"passed"`` (the filters passed it; ``fingerprint`` is set), and
    then ``outcome`` is ``"samples"``, ``"window"`` (no window survived) or ``"decode"`` (a
    video could not be decoded); ``ledger`` holds the decode/window rejections and
    ``windows_in`` the candidate windows. Nothing raises: every failure is in the record.
    """
    record: dict[str, Any] = {
        "label": ref.label,
        "episode_id": ref.label,
        "source": ref.source,
        "source_path": ref.path,
        "stage": "load",
        "outcome": None,
        "fingerprint": [],
        "windows_in": 0,
        "ledger": [],
    }
    item = load(ref)
    if isinstance(item, Rejection):
        record["ledger"] = [item.to_row()]
        return [], record
    ep = item
    record.update(episode_id=ep.episode_id, source=ep.source, source_path=ep.source_path or ref.path)
    frames = EpisodeFrames(ep)
    rows: list[dict[str, Any]] = []
    try:
        verdict = check_episode(ep, cfg.filters, frames.sampled)
    except Exception as err:  # the quality camera's video cannot be decoded: a decode failure
        ledger = [_rejection(err, "decode", ref.path, ep.episode_id, ep.source)]
        record.update(stage="passed", outcome="decode", ledger=[r.to_row() for r in ledger])
        return [], record
    if verdict.rejection is not None:
        record.update(stage="filter", ledger=[verdict.rejection.to_row()])
        return [], record
    record.update(stage="passed", fingerprint=fingerprint_to_hex(verdict.fingerprint))
    try:
        rows, ledger, windows_in = episode_sample_rows(ep, cfg, verdict.quality, frames)
        outcome = "samples" if rows else "window"
    except Exception as err:  # a video that fails to decode is this episode's problem only
        rows, windows_in, outcome = [], 0, "decode"
        ledger = [_rejection(err, "decode", ref.path, ep.episode_id, ep.source)]
    record.update(outcome=outcome, windows_in=int(windows_in), ledger=[r.to_row() for r in ledger])
    return rows, record


def make_episode_fn(cfg: CurationConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map`` over discovered episode references.

    Input: ``group`` (work part), ``ref`` (EpisodeRef JSON). Output: ``group``, ``episode_id``,
    ``table`` (raw rows as Arrow IPC, empty when none) and ``record`` (JSON, see
    :func:`process_episode`).
    """

    def episode_row(row: dict[str, Any]) -> dict[str, Any]:
        ref = EpisodeRef.from_row(json.loads(row["ref"]))
        rows, record = process_episode(ref, cfg)
        table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA) if rows else None
        return {
            "group": int(row["group"]),
            "episode_id": record["episode_id"],
            "table": table_to_bytes(table) if table is not None else b"",
            "record": json.dumps(record),
        }

    return episode_row


class EpisodeCaptioner:
    """Ray Data actor: CoCa captions, CLIP scores and CLIP text embeddings for every sample
    of a batch of episode rows (see :func:`make_episode_fn`). The model loads once per actor."""

    def __init__(self, caption_cfg):
        from curation.stages.caption import Captioner

        self.captioner = Captioner(caption_cfg)
        self.batch = caption_cfg.batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from curation.stages.compose import decode_sample_frames

        tables = [table_from_bytes(b) if len(b) else None for b in batch["table"]]
        rows = [r for t in tables if t is not None for r in t.to_pylist()]
        for start in range(0, len(rows), self.batch):
            chunk = rows[start : start + self.batch]
            images = np.stack([decode_sample_frames(r["video"], r["video_format"])[0] for r in chunk])
            texts = [r["instruction"] for r in chunk]
            scores, captions = self.captioner.score_and_caption(images, texts)
            embeddings = self.captioner.embed_text(texts)
            for r, score, caption, emb in zip(chunk, scores, captions, embeddings, strict=True):
                r["caption"] = caption
                r["quality"] = {**r["quality"], "clip_score": float(score)}
                r["text_embedding"] = emb.tolist()
        out_tables, pos = [], 0
        for t in tables:
            if t is None:
                out_tables.append(b"")
                continue
            part = rows[pos : pos + t.num_rows]
            pos += t.num_rows
            out_tables.append(table_to_bytes(pa.Table.from_pylist(part, schema=RAW_SCHEMA)))
        return {**batch, "table": np.asarray(out_tables, dtype=object)}
