"""Curation's latent stage: each sample's 1 + K frames through the model's codec, once, stored in the shards.

An actor pool of Ray Data (:class:`PartLatentEncoder`, after the episode tasks and the
caption actors), so the codec loads once per actor, and on a GPU when the job asks for one
(``RunConfig.latent_num_gpus``). One call takes one part (the part's raw rows as Arrow IPC,
its records and sketches) and writes it with a ``latents`` column (:mod:`schemas.latents`:
float32 bytes of ``latent_shape``), so a part that exists is complete and a rerun skips it.

Per part (1 row → 1 row; N samples → N latents or rejections):

    decode each sample's frames (the writer's own inverse) → batches of ``batch_size`` rows
    of one frame size → ``encoder.encode`` → check shape and finiteness → latents bytes

A batch that fails is encoded again row by row, so that a sample the codec cannot take
(undecodable frames, a size it refuses, NaN out) is rejected alone: its row leaves the
part, its episode's record gains a window-level :class:`~schemas.Rejection` (stage
``latents``) and one row fewer, and its statistics sketch is made again from the rows left;
an episode that loses every row becomes an episode-level rejection (outcome ``latents``).
So inputs = outputs + rejected still holds, and the statistics cover exactly the shards' rows.

The codec comes from a :data:`schemas.latents.LatentEncoderFactory` that the driver passes in
(pretrain's, through ``pipelines/curate.py``); curation imports no model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from curation.episode_samples import episode_table, finish_part, table_from_bytes
from schemas import Rejection
from schemas.frames import decode_sample_frames
from schemas.latents import LatentConfig, LatentEncoder, LatentEncoderFactory, latents_to_bytes

STAGE = "latents"


def encode_rows(
    rows: Sequence[dict[str, Any]], encoder: LatentEncoder, batch_size: int
) -> list[tuple[bytes, list[int]] | tuple[str, str]]:
    """Per row: ``(latent bytes, latent_shape)``, or ``(reason, detail)`` when it cannot be encoded."""
    out: list[Any] = [None] * len(rows)
    frames: dict[int, np.ndarray] = {}
    for i, r in enumerate(rows):
        try:
            f = decode_sample_frames(r["video"], r["video_format"])
            if f.shape != (len(r["frame_indices"]), r["height"], r["width"], 3):
                raise ValueError(
                    f"frames have shape {f.shape}, the row says "
                    f"({len(r['frame_indices'])}, {r['height']}, {r['width']}, 3)"
                )
            frames[i] = f
        except Exception as err:  # one sample's bytes: its own rejection
            out[i] = ("undecodable_frames", f"{type(err).__name__}: {err}")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, f in frames.items():
        by_shape.setdefault(f.shape, []).append(i)
    for shape, idx in by_shape.items():
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
            try:
                results = _encode(encoder, [frames[i] for i in batch], shape)
            except Exception:  # find the sample(s) at fault: the others keep their latents
                results = []
                for i in batch:
                    try:
                        results += _encode(encoder, [frames[i]], shape)
                    except Exception as err:
                        results.append(_failure(err))
            for i, res in zip(batch, results, strict=True):
                out[i] = res
    return out


def _encode(encoder: LatentEncoder, frames: list[np.ndarray], shape: tuple[int, ...]) -> list[Any]:
    want = tuple(encoder.latent_shape(*shape[:3]))
    lat = np.asarray(encoder.encode(np.stack(frames)))
    if lat.shape != (len(frames), *want):
        raise ValueError(f"codec gave latents of shape {lat.shape}, expected {(len(frames), *want)}")
    if not np.isfinite(lat).all():
        raise FloatingPointError("codec gave NaN/inf latents")
    return [(latents_to_bytes(x), list(want)) for x in lat]


def _failure(err: Exception) -> tuple[str, str]:
    reason = "nonfinite_latents" if isinstance(err, FloatingPointError) else "encode_failed"
    return reason, f"{type(err).__name__}: {err}"


def apply_latents(
    rows: list[dict[str, Any]],
    records: list[dict[str, Any]],
    sketches: list[bytes | None],
    results: Sequence[Any],
    sketch_k: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[bytes | None]]:
    """The part with every encoded row's latents set and every failed row moved to its episode's
    ledger (records and sketches updated; see the module docstring)."""
    from curation.stages.stats import raw_rows_accumulator

    kept: list[dict[str, Any]] = []
    new_records, new_sketches = [], []
    pos = 0
    for record, sketch in zip(records, sketches, strict=True):
        mine = rows[pos : pos + record["samples"]]
        outcomes = results[pos : pos + record["samples"]]
        pos += record["samples"]
        ok, ledger = [], list(record.get("ledger", []))
        for r, res in zip(mine, outcomes, strict=True):
            if isinstance(res[0], bytes):
                ok.append({**r, "latents": res[0], "latent_shape": res[1]})
            else:
                ledger.append(_rejection(record, r["start_frame"], *res))
        if len(ok) < len(mine):
            record = {**record, "samples": len(ok), "ledger": ledger}
            if not ok:
                detail = f"none of its {len(mine)} samples could be encoded"
                record.update(outcome=STAGE)
                record["ledger"] = [*ledger, _rejection(record, -1, "no_sample_encoded", detail)]
            acc = raw_rows_accumulator(episode_table(ok), sketch_k) if ok else None
            sketch = acc.to_bytes() if acc is not None and acc.action.n else None
        kept += ok
        new_records.append(record)
        new_sketches.append(sketch)
    return kept, new_records, new_sketches


def _rejection(record: dict[str, Any], window: int, reason: str, detail: str) -> dict[str, Any]:
    path = record.get("source_path") or record.get("source") or "<unknown>"
    return Rejection(STAGE, reason, path, record["episode_id"], detail, record["source"], window).to_row()


class PartLatentEncoder:
    """Ray Data actor: latents for every sample of the part rows of
    :func:`curation.episode_samples.make_part_fn` (``work=None``) or of the caption actors; the
    codec, which the driver provides as a factory, loads once per actor (on the GPU Ray gave it,
    if any). With ``work`` set it writes each part (the last stage)."""

    def __init__(
        self, cfg: LatentConfig, make_encoder: LatentEncoderFactory, sketch_k: int, work: str | None = None
    ):
        import ray

        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.encoder = make_encoder(cfg, device)
        self.batch = cfg.batch_size
        self.sketch_k = sketch_k
        self.work = work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [self.encode_part(batch, i) for i in range(len(batch["part"]))]
        return {k: np.asarray([o[k] for o in out], dtype=object) for k in out[0]}

    def encode_part(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        from curation.parts import decode_sketches

        rows = table_from_bytes(batch["table"][i]).to_pylist()
        records = json.loads(batch["records"][i])
        sketches = decode_sketches(batch["sketches"][i])
        results = encode_rows(rows, self.encoder, self.batch)
        rows, records, sketches = apply_latents(rows, records, sketches, results, self.sketch_k)
        return finish_part(batch["part"][i], episode_table(rows), records, sketches, self.work)


def latents_entry(encoder: LatentEncoder, frames: int, height: int, width: int) -> dict[str, Any]:
    """The manifest's ``latents``: the codec's identity and the latent shape of every sample."""
    shape = encoder.latent_shape(frames, height, width)
    return {**encoder.identity, "latent_shape": [int(s) for s in shape], "dtype": "float32"}
