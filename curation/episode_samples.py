"""Per-episode work: one episode reference in, its verdict and un-normalised sample rows out (1:1).

This is the heavy stage of curation, one pass per episode so that the episode is loaded once
and every frame is decoded once and resized once, whatever the filters and the window
geometry::

    load episode (by reference) → numeric filters → decode the quality camera (whole) →
    video filters + fingerprint on frames picked from it → window → decode the other cameras
    → compose, once, the views of the steps some window uses ([U, H, W, 3]) → encode each
    window's 1+K composed frames (PNG: each composed frame is deflated once and the windows' PNGs are
    stacked from those pieces)

An episode a filter rejects is not decoded further (the numeric filters need no frames at
all). Near-duplicate detection needs every fingerprint (N:1), so it runs on the driver after
all episodes; the fingerprint travels in the episode's record and a duplicate's rows are
dropped there.

Normalisation needs statistics over the whole corpus, so rows here keep the *raw* action
chunk and state (``raw_action [p, Da]``, ``raw_state [Ds]``); the shard writer normalises
them, and each episode's statistics sketch is made here, while its windows are at hand.
Action-free episodes (:mod:`schemas.episode`) give rows with ``raw_action [p, 0]`` and
``raw_state []`` and no sketch (statistics are over rows with actions); their record says
``action_free`` so that the manifest can count them.

The job's Ray unit is a *part*, a run of consecutive episodes (:mod:`curation.parts`): one
task decodes them front to back (episodes packed in one video file are then read in order)
and, when no caption stage follows, writes the part itself, so only the small records reach
the driver. Otherwise the part's rows travel to the caption actors as one row whose
``table`` column is Arrow IPC bytes (one fixed schema for every Ray block).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.config import CurationConfig
from curation.formats import EpisodeRef
from curation.frames import decode_frames
from curation.ingest import _rejection, load
from curation.stages.filters import check_episode, fingerprint_to_hex
from curation.stages.windowing import window_episode
from schemas import Episode, FrameRef, Rejection, Sample, get_embodiment
from schemas.compose import compose_views
from schemas.frames import PngRows, encode_sample_frames, png_rows, stack_png
from schemas.sample import QUALITY_KEYS
from schemas.text import CaptionModelFactory

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
    # only the frames some window uses are composed (every Δ-th at stride Δ: a quarter of them
    # with the default preset); at[i] is camera frame i's row in composed_UHWC
    used = sorted({i for w in result.windows for i in w.camera_indices})
    at = {i: k for k, i in enumerate(used)}
    views = {role: frames.all(role)[used] for role in episode.cameras}
    vc = cfg.video
    composed_UHWC = compose_views(views, vc.width, vc.height, vc.fit)
    spec = get_embodiment(episode.embodiment)
    rows = []
    png_cache: dict[int, PngRows] = {}  # each composed frame compressed once, whatever its windows
    for w in result.windows:
        if vc.format == "png":
            idx = [at[i] for i in w.camera_indices]
            video = stack_png(
                [png_cache.get(i) or png_cache.setdefault(i, png_rows(composed_UHWC[i])) for i in idx]
            )
        else:
            frames = composed_UHWC[[at[i] for i in w.camera_indices]]
            video = encode_sample_frames(frames, vc.format, fps=w.frames_fps, codec=vc.codec, crf=vc.crf)
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
        "action_free": False,
    }
    item = load(ref)
    if isinstance(item, Rejection):
        record["ledger"] = [item.to_row()]
        return [], record
    ep = item
    record.update(
        episode_id=ep.episode_id,
        source=ep.source,
        source_path=ep.source_path or ref.path,
        action_free=not ep.has_action,
    )
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
    if verdict.skipped:  # the action checks do not apply to action-free video
        record["skipped_checks"] = {name: "no_actions" for name in verdict.skipped}
    try:
        rows, ledger, windows_in = episode_sample_rows(ep, cfg, verdict.quality, frames)
        outcome = "samples" if rows else "window"
    except Exception as err:  # a video that fails to decode is this episode's problem only
        rows, windows_in, outcome = [], 0, "decode"
        ledger = [_rejection(err, "decode", ref.path, ep.episode_id, ep.source)]
    record.update(outcome=outcome, windows_in=int(windows_in), ledger=[r.to_row() for r in ledger])
    return rows, record


def episode_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def process_part(
    refs: list[EpisodeRef], cfg: CurationConfig
) -> tuple[pa.Table, list[dict[str, Any]], list[bytes | None]]:
    """A run of consecutive episodes: ``(raw rows, records, sketches)`` in discovery order."""
    return assemble_part((process_episode(ref, cfg) for ref in refs), cfg.norm.sketch_k)


def assemble_part(
    episodes: Iterable[tuple[list[dict[str, Any]], dict[str, Any]]], sketch_k: int
) -> tuple[pa.Table, list[dict[str, Any]], list[bytes | None]]:
    """``(raw rows, record)`` per episode, in order → the part's ``(table, records, sketches)``.

    Each record gains ``samples`` (its number of rows); each episode that gave samples gets
    the statistics sketch of its windows (a serialised
    :class:`curation.stages.stats.StatsAccumulator`), which the driver merges in discovery
    order after dedup, leaving the near-duplicates out, so no row is read twice."""
    from curation.stages.stats import raw_rows_accumulator

    tables, records, sketches = [], [], []
    for rows, record in episodes:
        records.append({**record, "samples": len(rows)})
        acc = None
        if rows:
            tables.append(episode_table(rows))
            acc = raw_rows_accumulator(tables[-1], sketch_k)
        # an action-free episode's accumulator is empty: no sketch, as for no samples
        sketches.append(acc.to_bytes() if acc is not None and acc.action.n else None)
    return (pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()), records, sketches


def make_part_fn(cfg: CurationConfig, work: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) function for ``Dataset.map`` over the job's parts.

    Input: ``part`` (index), ``refs`` (JSON list of EpisodeRef rows). Output: ``part``,
    ``records`` and ``sketches`` (JSON), ``table`` (the raw rows as Arrow IPC). With ``work``
    set this is the last stage: the task writes the part file itself
    (:func:`curation.parts.write_part`) and sends back only the records (``table`` empty);
    with ``work`` None the rows travel on to the caption actors, which write it.
    """

    def part_row(row: dict[str, Any]) -> dict[str, Any]:
        refs = [EpisodeRef.from_row(r) for r in json.loads(row["refs"])]
        table, records, sketches = process_part(refs, cfg)
        return finish_part(row["part"], table, records, sketches, work)

    return part_row


def finish_part(
    index: int, table: pa.Table, records: list, sketches: list[bytes | None], work: str | None
) -> dict[str, Any]:
    """The output row of a part stage. With ``work`` set it writes the part file and the row
    carries the records only (the driver needs nothing else); otherwise the rows and the
    sketches travel on too."""
    from curation.parts import encode_sketches, part_path, write_part

    row = {"part": int(index), "records": json.dumps(records), "sketches": "", "table": b""}
    if work is not None:
        write_part(part_path(Path(work), int(index)), table, records, sketches)
        return row
    return {**row, "sketches": encode_sketches(sketches), "table": table_to_bytes(table)}


class PartCaptioner:
    """Ray Data actor: CoCa captions and CLIP scores for every sample
    of the part rows of :func:`make_part_fn` (``work=None``); the model, which the driver
    provides as a factory, loads once per actor.
    With ``work`` set it writes each captioned part (the last stage)."""

    def __init__(self, caption_cfg, make_model: CaptionModelFactory, work: str | None = None):
        self.captioner = make_model(caption_cfg)
        self.batch = caption_cfg.batch_size
        self.work = work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [self.caption_part(batch, i) for i in range(len(batch["part"]))]
        return {k: np.asarray([o[k] for o in out], dtype=object) for k in out[0]}

    def caption_part(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        from curation.parts import decode_sketches
        from schemas.frames import decode_sample_frames

        rows = table_from_bytes(batch["table"][i]).to_pylist()
        for start in range(0, len(rows), self.batch):
            chunk = rows[start : start + self.batch]
            images = np.stack([decode_sample_frames(r["video"], r["video_format"])[0] for r in chunk])
            texts = [r["instruction"] for r in chunk]
            scores, captions = self.captioner.score_and_caption(images, texts)
            for r, score, caption in zip(chunk, scores, captions, strict=True):
                r["caption"] = caption
                r["quality"] = {**r["quality"], "clip_score": float(score)}
        sketches = decode_sketches(batch["sketches"][i])
        records = json.loads(batch["records"][i])
        return finish_part(batch["part"][i], episode_table(rows), records, sketches, self.work)
