"""``gwp curate`` — the curation job: sources → normalised Parquet shards + manifest + report.

    python -m pipelines.curate --config configs/curate_demo.json
    python -m pipelines.curate --source data/metaworld --source data/robomimic.hdf5 --out runs/curated

In-process Ray by default. Submitted as a job, the same command runs on a cluster::

    ray start --head
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.curate …

``--latents wan-vae --latents-vae <VAE folder or repo id> [--latents-geometry clip]`` (or a job file's
``latents`` section) adds the latent stage: every sample's frames through the model's codec, once,
stored in the shards (an actor pool: ``--latent-actors``, ``--latent-num-gpus`` per actor), so that
training reads them instead of running the codec.

A rerun resumes: finished phases, work parts and shards are kept (see curation/pipeline.py).
Exit status: 0 done; 1 the job ran but kept no sample (every input rejected: the reasons are printed
and the ledger is in the output folder) or the output folder is busy or holds another dataset; 2 a
mistake in the arguments or the job file (a missing source, a bad field, an unknown preset or model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from curation.config import PRESETS, CaptionConfig, read_config_file
from curation.job import RunConfig
from pipelines.config_flags import add_field_flags, field_overrides, name_flag
from pipelines.usage import ArgumentParser, JobFailed, UsageError, command, local_or_repo_id, lookup
from schemas import get_embodiment
from schemas.latents import LATENT_CODEC_KINDS, LatentConfig

CAPTION_FLAGS = ("model", "pretrained")
LATENT_FLAGS = ("vae", "patch", "geometry", "vae_temporal", "batch_size")  # --latents-<field>
LATENT_RUN_FLAGS = ("latent_actors", "latent_num_gpus", "latent_num_cpus")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp curate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", type=Path, help="job file (.json or .toml): sources, out, curation, caption, run"
    )
    p.add_argument("--source", action="append", default=[], help="a source folder or file (repeatable)")
    p.add_argument("--out", help="output dataset folder")
    p.add_argument(
        "--embodiment",
        help="the robot of sources without a mapping (LeRobot/RLDS conventions); a source entry's own wins",
    )
    name_flag(p, "--preset", PRESETS, help="curation preset")
    add_field_flags(
        p, CaptionConfig, CAPTION_FLAGS, prefix="caption"
    )  # --caption-model, --caption-pretrained
    p.add_argument(
        "--latents",
        dest="latents_codec",
        choices=list(LATENT_CODEC_KINDS),
        help="store every sample's latents made by this codec (the model's: wan-vae needs --latents-vae)",
    )
    add_field_flags(p, LatentConfig, LATENT_FLAGS, prefix="latents")
    add_field_flags(p, RunConfig, LATENT_RUN_FLAGS)
    p.add_argument("--no-progress", action="store_true")
    return p


def load_job_file(path: Path) -> dict:
    """The job file's top-level table (``ConfigError`` naming the file when it cannot be had)."""
    return read_config_file(path)


def check_inputs(job: Any, label: str) -> None:
    """Refuse, before Ray starts, a job whose sources are not there or whose caption model is unknown
    (``label`` says where the sources were named: ``--source`` or the job file)."""
    for spec in job.sources:
        if not Path(spec.path).expanduser().exists():
            raise UsageError(f"{label} {spec.path}: no such file or folder")
    if job.latents is not None and job.latents.codec == "wan-vae":
        local_or_repo_id("--latents-vae", job.latents.vae)
    if job.caption is not None:
        import open_clip

        lookup("open_clip model", open_clip.list_models(), job.caption.model)


def nothing_kept(manifest: Any, out: str) -> str | None:
    """Why the job kept no sample (the counts and the commonest rejection reasons), or None."""
    if manifest.counts.get("samples", 0):
        return None
    c = manifest.counts
    if not c.get("episodes_in") and not manifest.rejections:
        return f"no episode found in the sources; {out} holds an empty dataset"
    reasons = Counter(f"{r.reason} ({r.stage})" for r in manifest.rejections).most_common(3)
    shown = ", ".join(f"{reason}: {n}" for reason, n in reasons)
    return (
        f"no sample kept: {c.get('episodes_rejected', 0)} of {c.get('episodes_in', 0)} episodes rejected "
        f"({shown}; every rejection with its file in {out}/meta/)"
    )


@command("gwp curate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.config and not (args.source and args.out):
        raise UsageError("give --source (repeatable) and --out, or --config <job file>")
    if args.embodiment:
        get_embodiment(args.embodiment)  # a misspelt robot: the registry's did-you-mean, exit 2
    data: dict = load_job_file(args.config) if args.config else {}
    if args.source:
        data["sources"] = args.source
    if args.out:
        data["out"] = args.out
    if args.embodiment:
        data["sources"] = [
            {"embodiment": args.embodiment, **(s if isinstance(s, dict) else {"path": s})}
            for s in data.get("sources") or []
        ]
    if args.preset:
        data.setdefault("curation", {})["preset"] = args.preset
    caption = field_overrides(args, CaptionConfig, CAPTION_FLAGS, prefix="caption")
    if caption:
        data["caption"] = {**(data.get("caption") or {}), **caption}
    latents = field_overrides(args, LatentConfig, LATENT_FLAGS, prefix="latents")
    if args.latents_codec:
        latents["codec"] = args.latents_codec
    if latents:
        if not (args.latents_codec or data.get("latents")):
            raise UsageError("--latents-* settings need --latents CODEC (or a job file's latents section)")
        data["latents"] = {**(data.get("latents") or {}), **latents}
    run_flags = field_overrides(args, RunConfig, LATENT_RUN_FLAGS)
    if run_flags:
        data["run"] = {**(data.get("run") or {}), **run_flags}
    if args.no_progress:
        data.setdefault("run", {})["progress"] = False
    from curation.pipeline import job_from_dict, run  # Ray and the stages: only for a job that can run
    from curation.shards import OutputLockedError
    from schemas import SchemaVersionError
    from schemas.text import WeightsUnavailableError

    where = str(args.config or "command line")
    job = job_from_dict(data, where=where)  # a bad field or preset: ConfigError, one line, exit 2
    check_inputs(job, "--source" if args.source else f"{where}: source")
    caption_model = None
    if job.caption is not None:  # the model's text encoder (torch): loaded only for a job that captions
        from pretrain.text_encoder import captioner_from_config as caption_model
    text_encoder = None
    if job.curation.text.kind != "hashed":  # umT5 (torch, transformers): the model's, like the captioner
        from pretrain.text_encoder import text_encoder_from_config as text_encoder
    latent_encoder = None
    if job.latents is not None:  # the model's codec (torch; the Wan VAE from diffusers), like umT5
        from pretrain.stored_latents import latent_encoder_from_config as latent_encoder
    try:
        manifest = run(
            job, caption_model=caption_model, text_encoder=text_encoder, latent_encoder=latent_encoder
        )
    except WeightsUnavailableError as err:  # the config asks for a text model this machine cannot get
        raise UsageError(str(err)) from err
    except (OutputLockedError, FileExistsError, SchemaVersionError) as err:
        # the folder is busy, or holds another dataset or one written under another schema
        raise JobFailed(str(err)) from err
    print(json.dumps(manifest.counts, indent=2))
    why = nothing_kept(manifest, job.out)
    if why:
        raise JobFailed(why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
