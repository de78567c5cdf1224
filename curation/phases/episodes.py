"""Phase 2, episodes: 1 part of N consecutive episode refs → 1 work part file; one Ray task per part.

Inside a task each episode gets one pass (:mod:`curation.episode_samples`: load → filters →
decode → compose → window → encode; 1 episode → its N raw sample rows, its record with
verdict and fingerprint, its statistics sketch). Without a caption stage the task writes
the part itself (:mod:`curation.parts`) and only the small records reach the driver; with
one, the part's rows travel on to an actor pool (:class:`~curation.episode_samples.PartCaptioner`,
the model loaded once per actor), which captions them; then, with a ``latents`` section, to the
latent actors (:class:`~curation.latents.PartLatentEncoder`, the codec loaded once per actor, on
a GPU where asked), which encode every sample's frames. The last stage writes the part. A part
that exists is complete (written atomically), so a rerun runs only the missing ones.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from curation.episode_samples import PartCaptioner, make_part_fn
from curation.job import CurateJob
from curation.latents import PartLatentEncoder
from curation.parts import part_path
from curation.phases import log
from schemas.latents import LatentEncoderFactory
from schemas.text import CaptionModelFactory


def episodes_to_parts(
    job: CurateJob,
    work: Path,
    found: dict[str, Any],
    caption_model: CaptionModelFactory | None = None,
    latent_encoder: LatentEncoderFactory | None = None,
) -> list[Path]:
    """One work part per run of ``found["parts"]`` consecutive refs, each written by its Ray
    task; returns every part's path, in order."""
    import ray

    refs, sizes = found["refs"], found["parts"]
    stops = list(itertools.accumulate(sizes))
    bounds = [(stop - n, stop) for n, stop in zip(sizes, stops, strict=True)]
    parts = [part_path(work, i) for i in range(len(sizes))]
    pending = [i for i, p in enumerate(parts) if not p.exists()]
    log(f"phase 2 (episodes): {len(parts)} parts, {len(parts) - len(pending)} already done")
    if not pending:
        return parts
    items = [{"part": i, "refs": json.dumps(refs[slice(*bounds[i])])} for i in pending]
    ctx = ray.data.DataContext.get_current()
    reservation = ctx.op_resource_reservation_enabled
    if job.caption is None and job.latents is None:
        # a single operator: nothing to reserve CPUs for, and with the reservation on Ray Data
        # runs one task at a time until it has seen a task's output size (measured: the
        # second core idles for about the first task's length)
        ctx.op_resource_reservation_enabled = False
    try:
        # one part per block: one task per part
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        _run_parts(job, work, ds, len(items), caption_model, latent_encoder)
    finally:
        ctx.op_resource_reservation_enabled = reservation
    return parts


def _run_parts(
    job: CurateJob,
    work: Path,
    ds,
    total: int,
    caption_model: CaptionModelFactory | None,
    latent_encoder: LatentEncoderFactory | None,
) -> None:
    # load + filters + decode + compose + window + encode + sketch, one task per part; the
    # last stage writes the part and sends the driver its records only
    stages = [
        "episodes",
        *(["caption"] if job.caption is not None else []),
        *(["latents"] if job.latents else []),
    ]

    def writes(stage: str) -> str | None:
        return str(work) if stage == stages[-1] else None

    ds = ds.map(make_part_fn(job.curation, writes("episodes")), num_cpus=job.run.episode_num_cpus)
    if job.caption is not None:
        # captions + CLIP: actor pool (model loaded once per actor), one part per call
        ds = ds.map_batches(
            PartCaptioner,
            fn_constructor_kwargs={
                "caption_cfg": job.caption,
                "make_model": caption_model,
                "work": writes("caption"),
            },
            batch_size=1,
            batch_format="numpy",
            num_cpus=job.run.caption_num_cpus,
            concurrency=job.run.caption_actors,
        )
    if job.latents is not None:
        if latent_encoder is None:
            raise ValueError("the job has a latents section but no latent encoder factory was given")
        # the codec over every sample's frames: actor pool (codec loaded once per actor, a GPU
        # each where the run asks for one), one part per call
        gpus = {"num_gpus": job.run.latent_num_gpus} if job.run.latent_num_gpus else {}
        ds = ds.map_batches(
            PartLatentEncoder,
            fn_constructor_kwargs={
                "cfg": job.latents,
                "make_encoder": latent_encoder,
                "sketch_k": job.curation.norm.sketch_k,
                "work": writes("latents"),
            },
            batch_size=1,
            batch_format="numpy",
            num_cpus=job.run.latent_num_cpus,
            concurrency=job.run.latent_actors,
            **gpus,
        )
    for done, row in enumerate(ds.iter_rows(), 1):
        records = json.loads(row["records"])
        samples = sum(1 for r in records if r["outcome"] == "samples")
        log(
            f"phase 2 (episodes): part {row['part']} written, {samples}/{len(records)} episodes gave samples ({done}/{total})"
        )
