"""The curation job: heterogeneous sources → validated, normalised Parquet shards + manifest.

Runs on Ray Data, in-process by default or on the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). :func:`run` is the driver: one call per phase, each phase one
module of :mod:`curation.phases` (ARCHITECTURE.md, "Curation stages").

Resumable and deterministic: the discovery, with the cut into parts, is saved in
``.work/discover.json``; each part is written atomically by its task (:mod:`curation.parts`)
and a rerun skips finished parts; rows, records and sketches are in discovery order
whatever the cut, so the statistics and the shards' content do not depend on it, nor on
anything else in :class:`~curation.job.RunConfig`; shards are written atomically, a rerun
skipping complete ones. So a run interrupted anywhere and rerun gives shards with the same
content as an uninterrupted run.

The workers write the parts into ``out``: on a multi-node cluster it must be storage every
node can write, as the sources must be storage every node can read.

Every input ends up in the shards or in the ledger: the manifest's counts balance at
every stage (``Manifest.validate`` checks the totals). A dataset given twice (the same path,
or a copy: the same content fingerprint) is read once; each later copy is one input,
rejected at ``discover`` as ``duplicate_source`` (:mod:`curation.ingest`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from curation.job import CurateJob, RunConfig, job_from_dict
from curation.latents import latents_entry
from curation.phases import log
from curation.phases.dedup import dedup_parts
from curation.phases.discover import discover_all
from curation.phases.episodes import episodes_to_parts
from curation.phases.manifest import build_manifest, write_ledger_and_manifest
from curation.phases.output import check_output_version, finished_manifest, work_folder
from curation.phases.pack import write_shards
from curation.phases.statistics import merge_sketches
from curation.shards import exclusive_output
from curation.text_embeddings import embed_instructions, make_text_encoder
from curation.warm import warm_workers
from schemas import Manifest
from schemas.errors import ConfigError
from schemas.latents import LatentEncoderFactory
from schemas.text import CaptionModelFactory, TextEncoderFactory

__all__ = ["CurateJob", "RunConfig", "job_from_dict", "run"]


def run(
    job: CurateJob,
    caption_model: CaptionModelFactory | None = None,
    text_encoder: TextEncoderFactory | None = None,
    latent_encoder: LatentEncoderFactory | None = None,
) -> Manifest:
    """Run (or resume) the whole job; returns the manifest. A job with a ``caption`` section needs
    ``caption_model``, the factory of the model that captions (the driver passes pretrain's); a job
    whose text encoder is not the built-in ``hashed`` one needs ``text_encoder``, likewise; a job
    with a ``latents`` section needs ``latent_encoder``, the factory of the model's codec."""
    if job.caption is not None and caption_model is None:
        raise ValueError(
            "the job has a caption section but no caption model was given: pass run(job, caption_model=...), "
            "e.g. pretrain.text_encoder.captioner_from_config"
        )
    if job.latents is not None and latent_encoder is None:
        raise ValueError(
            "the job has a latents section but no latent encoder was given: pass run(job, latent_encoder=...), "
            "e.g. pretrain.stored_latents.latent_encoder_from_config"
        )
    out = Path(job.out)
    with exclusive_output(out):
        check_output_version(out)
        done = finished_manifest(out, job)
        if done is not None:
            return done
        # built before any work, so weights that cannot be had fail at start-up, not after the shards
        encoder = make_text_encoder(job.curation.text, text_encoder)
        latents = None
        if job.latents is not None:  # likewise the codec, and a window geometry it cannot take
            w, v = job.curation.windows, job.curation.video
            try:
                codec = latent_encoder(job.latents, "cpu")
                latents = latents_entry(codec, w.num_future + 1, v.height, v.width)
            except (OSError, RuntimeError, ValueError) as err:
                raise ConfigError(
                    "job.latents",
                    "",
                    f"{job.latents.codec} codec for {w.num_future + 1} frames of {v.width}x{v.height}: {err}",
                ) from err
            del codec  # each latent actor loads its own
        work = work_folder(out, job)
        cpus = start_ray(job.run)
        started = time.time()

        # sources → episode refs (1 row per episode; an unlistable source → 1 rejection), cut into parts
        found = discover_all(job, work, cpus)
        # parts of N refs → part files (1 per part; 1 episode → its samples, record and sketch)
        # (with a latents section: + each sample's 1 + K frames → its latents, or a rejection)
        parts = episodes_to_parts(job, work, found, caption_model, latent_encoder)
        # every record → near-duplicates (N:1) and the stage accounting
        outcome = dedup_parts(parts, found, job.curation, latents=job.latents is not None)
        # the kept episodes' sketches → 1 EmbodimentStats per embodiment (N:1)
        stats = merge_sketches(parts, job.curation.norm, outcome.duplicates)
        log(f"phase 4 (stats): {', '.join(f'{k}: {v.action.count} action values' for k, v in stats.items())}")
        # the parts' kept rows, in order → shards of a target size (1 raw row → 1 Sample row)
        shards = write_shards(out, parts, stats, job.curation, outcome.duplicates)
        # the shards' unique instructions → 1 token-state entry each, beside the shards (N:1)
        text = embed_instructions(out, shards, encoder) if shards else None
        if text is not None:
            log(f"text: {len(text['instructions'])} unique instructions embedded by {text['encoder']}")
        # counts + stats + shards + text + ledger → 1 manifest, written last
        manifest = build_manifest(job, found, outcome, stats, shards, text, latents if shards else None)
        write_ledger_and_manifest(out, manifest)

        counts = manifest.counts
        log(
            f"done in {time.time() - started:.1f}s: {counts['episodes_in']} episodes in, "
            f"{counts['episodes_with_samples']} gave {counts['samples']} samples in {len(shards)} shards, "
            f"{counts['episodes_rejected']} rejected"
        )
    if job.run.report:
        try:
            from curation.report import write_report

            log(f"data report: {write_report(out)}")
        except Exception as err:  # the dataset is complete; a report failure must not hide that
            print(f"data report failed: {type(err).__name__}: {err}", file=sys.stderr)
    return manifest


def start_ray(run_cfg: RunConfig) -> int:
    """Join the cluster of ``RAY_ADDRESS`` or start Ray in this process; returns its CPUs."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster
            ray.init(log_to_driver=True)
        else:  # in-process; "local" so a cluster left running on this machine is not joined
            ray.init(
                address="local",
                num_cpus=run_cfg.num_cpus,
                include_dashboard=False,
                log_to_driver=True,
                object_spilling_directory=run_cfg.spill_dir,
            )
    cpus = int(ray.cluster_resources().get("CPU", 1))
    warm_workers(cpus, run_cfg.episode_num_cpus)  # their imports overlap the driver's start
    ray.data.DataContext.get_current().enable_progress_bars = run_cfg.progress
    return cpus
