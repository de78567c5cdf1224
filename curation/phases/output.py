"""Before anything runs: what the output folder already holds decides what the job does.

* a manifest of this job's config (the same digest) → the job is done, its manifest is
  returned;
* a manifest of another config → refused (``FileExistsError``: another --out, or delete it);
* a manifest, shard or ``.work`` folder written under another schema major version →
  refused with a :class:`~schemas.SchemaVersionError` naming the file (ids and layouts
  change meaning between majors, so nothing of it may be mixed in or reused);
* a ``.work`` folder stamped with another config or work layout → started over (with the
  shards); the same stamp → reused, so a rerun resumes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from curation.job import CurateJob
from curation.phases import log
from curation.shards import MANIFEST_PATH, WORK_DIR, atomic_write_bytes
from schemas import SCHEMA_VERSION, Manifest, check_schema_version

WORK_LAYOUT = "4"  # of .work/: a work folder of another layout is started over


def check_output_version(out: Path) -> None:
    """Refuse an output folder holding a manifest, shards or a ``.work`` folder written under
    another schema major version (SchemaVersionError naming the file). A ``.work`` stamp
    without a schema field was written before the field existed, under schema 1."""
    manifest_path = out / MANIFEST_PATH
    try:
        data = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    except (OSError, json.JSONDecodeError):
        data = None  # not a manifest of any version: finished_manifest reports it as it reads it
    if isinstance(data, dict):
        check_schema_version(data.get("schema_version"), str(manifest_path))
    for shard in sorted((out / "data").glob("shard-*.parquet")):
        try:
            meta = pq.read_schema(shard).metadata or {}
        except Exception:  # unreadable or cut: not reused, the shard is written again
            continue
        found = meta.get(b"gwp_schema_version")
        check_schema_version(found.decode() if found else None, str(shard))
    stamp = out / WORK_DIR / "digest"
    if stamp.exists():
        words = stamp.read_text().split()
        found = words[words.index("schema") + 1] if "schema" in words[:-1] else "1.0"
        check_schema_version(found, str(stamp))


def finished_manifest(out: Path, job: CurateJob) -> Manifest | None:
    """The manifest of a finished run of this job's config, None when there is none; a
    manifest of another config is a ``FileExistsError``."""
    manifest_path = out / MANIFEST_PATH
    if not manifest_path.exists():
        return None
    data = json.loads(manifest_path.read_text())
    if data.get("config", {}).get("digest") == job.digest():
        log(f"{out} is already curated with this config; nothing to do")
        return Manifest.from_dict(data, where=str(manifest_path))
    raise FileExistsError(
        f"{out} holds a dataset curated with another config ({manifest_path}); use another --out or delete it"
    )


def work_folder(out: Path, job: CurateJob) -> Path:
    """``out/.work``, kept when stamped with this job's digest, work layout and schema, started
    over (with ``out/data``) otherwise; stamped before any phase writes into it."""
    work = out / WORK_DIR
    digest_file = work / "digest"
    stamp = f"{job.digest()} work-layout {WORK_LAYOUT} schema {SCHEMA_VERSION}"
    if work.exists() and (not digest_file.exists() or digest_file.read_text() != stamp):
        log(f"{work} is from another config or code version: starting over")
        shutil.rmtree(work)
        shutil.rmtree(out / "data", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(digest_file, stamp.encode())
    return work
