"""What a curation job is: its sources, output folder, content settings and run settings.

:class:`CurateJob` splits what decides the output (``content_config``: sources, curation,
caption and stored-latents settings, schema version; hashed by :meth:`CurateJob.digest` for resume and
recorded in the manifest) from how the job runs (:class:`RunConfig`: resources and
granularity, which never change a byte of the output). :func:`job_from_dict` is the strict
reader of a job file's table. :mod:`curation.pipeline` runs a job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from curation.config import CaptionConfig, CurationConfig, get_preset, preset_with_overrides
from curation.ingest import SourceSpec
from schemas import SCHEMA_VERSION
from schemas.latents import LatentConfig

CODE_VERSION = "0.1.0"


@dataclass(frozen=True)
class RunConfig:
    """How the job runs (resources, granularity); never changes what it produces."""

    # longest part: the run of consecutive episodes of one Ray task, and the resume unit
    # (shorter when needed to give every CPU a task). Episodes packed in one video file
    # (LeRobot v3.0) are then decoded front to back by one decoder, whose read-ahead is
    # wasted when it jumps between episodes (64 packed episodes took twice the wall time and
    # three times the CPU in tasks of 2)
    episodes_per_task: int = 16
    episode_num_cpus: float = 1.0  # the one pass over an episode is decode-bound: a whole CPU
    caption_num_cpus: float = 0.5  # per caption actor: fractional so reads keep running
    caption_actors: int = 1
    latent_num_cpus: float = 1.0  # per latent actor (the codec runs on its CPU when it has no GPU)
    latent_num_gpus: float = 0.0  # per latent actor: > 0 asks Ray for a GPU share, the codec runs there
    latent_actors: int = 1
    num_cpus: int | None = None  # in-process Ray only; None = all cores
    # in-process Ray only: a local folder the object store spills to when full (None: Ray's
    # temp folder); on a cluster each node's `ray start --object-spilling-directory` decides
    spill_dir: str | None = None
    progress: bool = True
    report: bool = True  # write the data report (meta/report/) after the manifest


@dataclass(frozen=True)
class CurateJob:
    sources: tuple[SourceSpec, ...]
    out: str
    curation: CurationConfig = field(default_factory=lambda: get_preset("default"))
    caption: CaptionConfig | None = None  # None: instruction only, hashed text embedding
    latents: LatentConfig | None = None  # None: no stored latents (training encodes the frames)
    run: RunConfig = field(default_factory=RunConfig)

    def content_config(self) -> dict[str, Any]:
        """Everything that decides the output (recorded in the manifest, hashed for resume)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "sources": [s.to_row() for s in self.sources],
            "curation": self.curation.to_dict(),
            "caption": None if self.caption is None else asdict(self.caption),
            **({} if self.latents is None else {"latents": asdict(self.latents)}),
        }

    def digest(self) -> str:
        text = json.dumps(self.content_config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_from_dict(data: dict[str, Any], where: str = "config") -> CurateJob:
    """``{"sources": [...], "out": ..., "curation": {preset, sections…}, "caption": {...}|null,
    "latents": {...}|null, "run": {...}}``; unknown keys are errors naming the key and the allowed ones."""
    from schemas.config import from_dict
    from schemas.errors import ConfigError

    allowed = {"sources", "out", "curation", "caption", "latents", "run"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(where, unknown[0], f"unknown field; allowed: {sorted(allowed)}")
    for key in ("sources", "out"):
        if key not in data:
            raise ConfigError(where, key, "missing")
    if not data["sources"]:
        raise ConfigError(where, "sources", "needs at least one source")
    caption, latents = data.get("caption"), data.get("latents")
    return CurateJob(
        sources=tuple(SourceSpec.coerce(s) for s in data["sources"]),
        out=str(data["out"]),
        curation=preset_with_overrides(data.get("curation") or {}, f"{where}.curation"),
        caption=None if caption is None else from_dict(CaptionConfig, caption, f"{where}.caption"),
        latents=None if latents is None else from_dict(LatentConfig, latents, f"{where}.latents"),
        run=from_dict(RunConfig, data.get("run") or {}, f"{where}.run"),
    )
