"""The curation job: heterogeneous sources → validated, normalised Parquet shards + manifest.

Runs on Ray Data, in-process by default or on the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). Stages (ARCHITECTURE.md, "Curation stages"), with row cardinality::

    phase 1  discover  1 source → N episode refs, metadata only (driver; a source that
                       cannot be listed → 1 rejection); the refs are cut into parts
    phase 2  episodes  one Ray task per part (a run of consecutive episodes), one pass per
                       episode: load → filters → decode → compose → window → encode (1:1
                       episode → its N samples, its verdict, fingerprint and stats sketch)
                       → captions + CLIP (actor pool) → the last stage writes the part
    phase 3  dedup     near-duplicates over every fingerprint (N:1, driver); a duplicate's
                       samples are dropped
    phase 4  stats     the episodes' sketches merged per embodiment, in discovery order
    phase 5  shards    normalise (vectorised, per part) → pack in order into shards of a
                       target size
    phase 6  manifest  (with ledger, stats, lineage, stage accounting) → data report

Resumable and deterministic: phase 1, with the cut into parts, is saved in
``.work/discover.json``; each part is written atomically by its task (:mod:`curation.parts`)
and a rerun skips finished parts; rows, records and sketches are in discovery order
whatever the cut, so the statistics and the shards' content do not depend on it, nor on
anything else in ``RunConfig``; shards are written atomically, a rerun skipping complete
ones. So a run interrupted anywhere and rerun gives shards with the same content as an
uninterrupted run.

The workers write the parts into ``out``: on a multi-node cluster it must be storage every
node can write, as the sources must be storage every node can read.

Every input ends up in the shards or in the ledger: the manifest's counts balance at
every stage (``Manifest.validate`` checks the totals). A dataset given twice (the same path,
or a copy: the same content fingerprint) is read once; each later copy is one input,
rejected at ``discover`` as ``duplicate_source`` (:mod:`curation.ingest`).

Output written under another schema major version (a manifest, shards in ``data/``, a
``.work`` folder) is refused with a :class:`~schemas.SchemaVersionError` naming the file:
ids and layouts change meaning between majors, so nothing of it may be mixed in or reused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import CaptionConfig, CurationConfig, ShardConfig, config_from_dict, get_preset
from curation.episode_samples import PartCaptioner, make_part_fn
from curation.formats import detect_format
from curation.ingest import SourceSpec, discover
from curation.parts import iter_sketches, part_path, read_layout, read_records
from curation.shards import (
    LEDGER_PATH,
    MANIFEST_PATH,
    SAMPLE_METADATA,
    SHARD_TEMPLATE,
    WORK_DIR,
    atomic_parquet_writer,
    atomic_write_bytes,
    atomic_write_table,
    exclusive_output,
    shard_info,
    shard_is_complete,
    write_manifest,
)
from curation.stages.filters import make_dedup_rejections
from curation.stages.sample import normalise_raw_table
from curation.stages.stats import StatsAccumulator
from curation.text_embeddings import embed_instructions, make_text_encoder
from curation.warm import warm_workers
from schemas import (
    SCHEMA_VERSION,
    EmbodimentStats,
    Manifest,
    Rejection,
    Sample,
    ShardInfo,
    SourceInput,
    check_schema_version,
    to_table,
    validate_sample_table,
)
from schemas.normalize import NormConfig
from schemas.text import CaptionModelFactory, TextEncoderFactory

CODE_VERSION = "0.1.0"
WORK_LAYOUT = "4"  # of .work/: a work folder of another layout is started over


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
    num_cpus: int | None = None  # in-process Ray only; None = all cores
    progress: bool = True
    report: bool = True  # write the data report (meta/report/) after the manifest


@dataclass(frozen=True)
class CurateJob:
    sources: tuple[SourceSpec, ...]
    out: str
    curation: CurationConfig = field(default_factory=lambda: get_preset("default"))
    caption: CaptionConfig | None = None  # None: instruction only, hashed text embedding
    run: RunConfig = field(default_factory=RunConfig)

    def content_config(self) -> dict[str, Any]:
        """Everything that decides the output (recorded in the manifest, hashed for resume)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "sources": [s.to_row() for s in self.sources],
            "curation": self.curation.to_dict(),
            "caption": None if self.caption is None else asdict(self.caption),
        }

    def digest(self) -> str:
        text = json.dumps(self.content_config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_from_dict(data: dict[str, Any], where: str = "config") -> CurateJob:
    """``{"sources": [...], "out": ..., "curation": {preset, sections…}, "caption": {...}|null,
    "run": {...}}``; unknown keys are errors naming the key and the allowed ones."""
    from schemas.config import from_dict
    from schemas.errors import ConfigError

    allowed = {"sources", "out", "curation", "caption", "run"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(where, unknown[0], f"unknown field; allowed: {sorted(allowed)}")
    for key in ("sources", "out"):
        if key not in data:
            raise ConfigError(where, key, "missing")
    if not data["sources"]:
        raise ConfigError(where, "sources", "needs at least one source")
    caption = data.get("caption")
    return CurateJob(
        sources=tuple(SourceSpec.coerce(s) for s in data["sources"]),
        out=str(data["out"]),
        curation=config_from_dict(data.get("curation") or {}, f"{where}.curation"),
        caption=None if caption is None else from_dict(CaptionConfig, caption, f"{where}.caption"),
        run=from_dict(RunConfig, data.get("run") or {}, f"{where}.run"),
    )


def log(msg: str) -> None:
    print(f"[curate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- phase 1: discover --------------------------------------------------------------


def discover_all(job: CurateJob, work: Path, cpus: int = 1) -> dict[str, Any]:
    """Phase 1, saved to ``.work/discover.json``: every episode ref (in source order, then the
    reader's order), their cut into parts (``parts``: episodes per part, see
    :func:`task_size`), and a rejection per source that cannot be listed; the inputs of each
    source are counted as they are listed (so an RLDS source, whose reader resolves to a
    version folder inside it, still counts under its configured path)."""
    path = work / "discover.json"
    if path.exists():
        saved = json.loads(path.read_text())
        log(f"phase 1 (discover): reusing {path} ({len(saved['refs'])} episodes)")
        return saved
    refs: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    source_inputs: dict[str, int] = {}
    seen: dict[str, str] = {}  # dataset id -> the source listed for it (a copy is one rejection)
    for spec in job.sources:
        found, rejected = discover(spec, seen)
        refs += [ref.to_row() for ref in found]
        rejections += [r.to_row() for r in rejected]
        source_inputs[spec.path] = source_inputs.get(spec.path, 0) + len(found) + len(rejected)
    per = task_size(job.run.episodes_per_task, len(refs), cpus)
    saved = {
        "refs": refs,
        "parts": [min(per, len(refs) - i) for i in range(0, len(refs), per)],
        "rejections": rejections,
        "source_inputs": source_inputs,
        "source_formats": {s.path: s.format or _safe_detect(s.path) for s in job.sources},
    }
    atomic_write_bytes(path, json.dumps(saved).encode())
    log(
        f"phase 1 (discover): {len(refs)} episodes in {len(job.sources)} sources, "
        f"{len(rejections)} unlistable or given twice"
    )
    return saved


def _safe_detect(path: str) -> str:
    try:
        return detect_format(path)
    except Exception:
        return "unknown"


# ---- phase 2: episodes --------------------------------------------------------------


def make_samples(
    job: CurateJob, work: Path, found: dict[str, Any], caption_model: CaptionModelFactory | None = None
) -> list[Path]:
    """Phase 2: one work part per run of ``found["parts"]`` consecutive refs, each written by
    its Ray task; returns every part's path, in order."""
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
    if job.caption is None:
        # a single operator: nothing to reserve CPUs for, and with the reservation on Ray Data
        # runs one task at a time until it has seen a task's output size (measured: the
        # second core idles for about the first task's length)
        ctx.op_resource_reservation_enabled = False
    try:
        # one part per block: one task per part
        _run_parts(
            job, work, ray.data.from_items(items, override_num_blocks=len(items)), len(items), caption_model
        )
    finally:
        ctx.op_resource_reservation_enabled = reservation
    return parts


def task_size(longest: int, episodes: int, cpus: int) -> int:
    """Episodes per part (Ray task): at most ``longest``, and few enough that each CPU gets one."""
    return max(1, min(longest, -(-episodes // max(1, cpus))))


def _run_parts(job: CurateJob, work: Path, ds, total: int, caption_model: CaptionModelFactory | None) -> None:
    # load + filters + decode + compose + window + encode + sketch, one task per part; the
    # last stage writes the part and sends the driver its records only
    last = job.caption is None
    ds = ds.map(make_part_fn(job.curation, str(work) if last else None), num_cpus=job.run.episode_num_cpus)
    if not last:
        # captions + CLIP: actor pool (model loaded once per actor), one part per call
        ds = ds.map_batches(
            PartCaptioner,
            fn_constructor_kwargs={
                "caption_cfg": job.caption,
                "make_model": caption_model,
                "work": str(work),
            },
            batch_size=1,
            batch_format="numpy",
            num_cpus=job.run.caption_num_cpus,
            concurrency=job.run.caption_actors,
        )
    for done, row in enumerate(ds.iter_rows(), 1):
        records = json.loads(row["records"])
        samples = sum(1 for r in records if r["outcome"] == "samples")
        log(
            f"phase 2 (episodes): part {row['part']} written, {samples}/{len(records)} episodes gave samples ({done}/{total})"
        )


# ---- phase 3: near-duplicates -------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Every episode's fate after the driver's N:1 duplicate stage, with the stage counts."""

    rejections: list[Rejection]
    duplicates: frozenset[str]
    stage_counts: dict[str, dict[str, int]]
    windows_in: int
    window_rejections: int
    episodes_with_samples: int


def settle(
    records: list[dict[str, Any]], discover_rejections: list[Rejection], cfg: CurationConfig
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
            "out": with_samples,
            "rejected": len(accepted) - decode_rejected - with_samples,
        },
    }
    return Outcome(rejections, dup_ids, counts, windows_in, window_rejections, with_samples)


# ---- phase 4: statistics ------------------------------------------------------------


def compute_stats(
    parts: list[Path], norm: NormConfig, exclude: frozenset[str] = frozenset()
) -> dict[str, EmbodimentStats]:
    """Merge the episodes' sketches per embodiment in discovery order (deterministic whatever
    the cut into parts), leaving out the episodes in ``exclude`` (near-duplicates)."""
    merged: dict[str, StatsAccumulator] = {}
    for path in parts:
        for record, blob in iter_sketches(path):
            if blob is None or record["episode_id"] in exclude:
                continue
            acc = StatsAccumulator.from_bytes(blob)
            merged[acc.embodiment] = merged[acc.embodiment].merge(acc) if acc.embodiment in merged else acc
    return {emb: acc.finalize(norm) for emb, acc in sorted(merged.items())}


# ---- phase 5: shards ----------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index``: row ranges ``(part path, start, stop)`` of the parts, in order."""

    index: int
    pieces: tuple[tuple[str, int, int], ...]

    @property
    def rows(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)


def plan_shards(parts: list[Path], sc: ShardConfig, exclude: frozenset[str] = frozenset()) -> list[ShardPlan]:
    """Cut the rows of ``parts`` (in order, without the episodes in ``exclude``) into shards of
    ``sc.target_bytes`` (estimated: encoded video + 4 bytes per number) or ``sc.max_rows``,
    from the parts' metadata alone (:func:`curation.parts.read_layout`)."""
    plans: list[ShardPlan] = []
    pieces: list[tuple[str, int, int]] = []
    rows = size = 0
    for path in parts:
        records, nbytes = read_layout(path)
        for run_start, run_stop in _kept_runs(records, exclude):
            start = run_start
            for i in range(run_start, run_stop):
                if rows and (size + nbytes[i] > sc.target_bytes or rows >= sc.max_rows):
                    if i > start:
                        pieces.append((str(path), start, i))
                    plans.append(ShardPlan(len(plans), tuple(pieces)))
                    pieces, rows, size, start = [], 0, 0, i
                rows += 1
                size += nbytes[i]
            pieces.append((str(path), start, run_stop))
    if rows:
        plans.append(ShardPlan(len(plans), tuple(pieces)))
    return plans


def _kept_runs(records: list[dict[str, Any]], exclude: frozenset[str]) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of a part's episodes that are not in ``exclude``, merged."""
    runs: list[tuple[int, int]] = []
    pos = 0
    for rec in records:
        n = rec["samples"]
        if n and rec["episode_id"] not in exclude:
            if runs and runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], pos + n)
            else:
                runs.append((pos, pos + n))
        pos += n
    return runs


def write_planned_shard(
    out: str, plan: ShardPlan, stats: dict[str, EmbodimentStats], cfg: CurationConfig
) -> ShardInfo:
    """One shard (a Ray task in the job): its row ranges ``row_group_rows`` at a time — read,
    normalise and validate (vectorised; a bad row fails naming its part), append — written
    atomically. Memory holds about one row group, not a part: where fresh memory is slow to
    fault in, a whole part's table (tens of MB of PNGs) cost more than
    compressing it. A complete shard from an earlier run is kept without reading anything."""
    sc = cfg.shards
    path = Path(out) / SHARD_TEMPLATE.format(index=plan.index)
    if not shard_is_complete(path, plan.rows):
        schema = Sample.arrow_schema().with_metadata(SAMPLE_METADATA)
        with atomic_parquet_writer(path, schema, compression=sc.compression) as writer:
            parts: dict[str, PartRows] = {}  # a part with a gap (a duplicate) gives several pieces
            for part, start, stop in plan.pieces:
                rows = parts.setdefault(part, PartRows(part))
                for raw in rows.chunks(start, stop, sc.row_group_rows):
                    table = validate_sample_table(normalise_raw_table(raw, stats, cfg.norm), where=part)
                    writer.write_table(table.replace_schema_metadata(SAMPLE_METADATA))
    return shard_info(Path(out), plan.index, plan.rows)


class PartRows:
    """Row ranges of one work part, read a row group at a time; the last group read is kept,
    so the pieces either side of a gap share its read."""

    def __init__(self, path: str):
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.stops = list(itertools.accumulate(sizes))
        self._last: tuple[int, pa.Table | None] = (-1, None)

    def group(self, index: int) -> pa.Table:
        if self._last[0] != index:
            self._last = (index, self.file.read_row_group(index))
        return self._last[1]

    def chunks(self, start: int, stop: int, rows: int) -> Iterator[pa.Table]:
        """Rows ``[start, stop)`` in consecutive tables of ``rows`` (the last one shorter)."""
        pending: list[pa.Table] = []
        have = 0
        for index, group_stop in enumerate(self.stops):
            group_start = self.stops[index - 1] if index else 0
            lo, hi = max(start, group_start), min(stop, group_stop)
            if lo >= hi:
                continue
            table = self.group(index).slice(lo - group_start, hi - lo)
            while table.num_rows:
                take = min(rows - have, table.num_rows)
                pending.append(table.slice(0, take))
                table, have = table.slice(take), have + take
                if have == rows:
                    yield pa.concat_tables(pending)
                    pending, have = [], 0
        if pending:
            yield pa.concat_tables(pending)


def write_shards(
    out: Path,
    parts: list[Path],
    stats: dict[str, EmbodimentStats],
    cfg: CurationConfig,
    exclude: frozenset[str] = frozenset(),
    *,
    use_ray: bool = True,
) -> list[ShardInfo]:
    """Phase 5: plan the shards from the parts' metadata, then write them, one Ray task per
    shard (``use_ray``; in this process otherwise); a stale shard left by an interrupted run
    with more shards is removed."""
    plans = plan_shards(parts, cfg.shards, exclude)
    if use_ray:
        import ray

        task = ray.remote(num_cpus=1)(write_planned_shard)
        pending = {task.remote(str(out), plan, stats, cfg): plan for plan in plans}
        done: dict[int, ShardInfo] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(ready[0])
            done[plan.index] = ray.get(ready[0])
            log(f"phase 5 (shards): {done[plan.index].name} ({plan.rows} rows; {len(done)}/{len(plans)})")
        shards = [done[i] for i in range(len(plans))]
    else:
        shards = [write_planned_shard(str(out), plan, stats, cfg) for plan in plans]
    keep = {s.name for s in shards}
    for stale in (out / "data").glob("shard-*.parquet"):
        if f"data/{stale.name}" not in keep:
            stale.unlink()
    return shards


# ---- phase 6: manifest --------------------------------------------------------------


def source_digest(path: str) -> str:
    """sha256 over every file of a source (relative path + content), in sorted order."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if f != root else f.name).encode())
        try:
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as err:
            h.update(f"<unreadable: {err.strerror}>".encode())
    return h.hexdigest()


def check_output_version(out: Path) -> None:
    """Refuse an output folder holding a manifest, shards or a ``.work`` folder written under
    another schema major version (SchemaVersionError naming the file). A ``.work`` stamp
    without a schema field was written before the field existed, under schema 1."""
    manifest_path = out / MANIFEST_PATH
    try:
        data = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    except (OSError, json.JSONDecodeError):
        data = None  # not a manifest of any version: run() reports it as it reads it
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


def run(
    job: CurateJob,
    caption_model: CaptionModelFactory | None = None,
    text_encoder: TextEncoderFactory | None = None,
) -> Manifest:
    """Run (or resume) the whole job; returns the manifest. A job with a ``caption`` section needs
    ``caption_model``, the factory of the model that captions (the driver passes pretrain's); a job
    whose text encoder is not the built-in ``hashed`` one needs ``text_encoder``, likewise."""
    import ray

    if job.caption is not None and caption_model is None:
        raise ValueError(
            "the job has a caption section but no caption model was given: pass run(job, caption_model=...), "
            "e.g. pretrain.text_encoder.captioner_from_config"
        )

    out = Path(job.out)
    with exclusive_output(out):
        manifest_path = out / MANIFEST_PATH
        check_output_version(out)
        if manifest_path.exists():
            data = json.loads(manifest_path.read_text())
            if data.get("config", {}).get("digest") == job.digest():
                log(f"{out} is already curated with this config; nothing to do")
                return Manifest.from_dict(data, where=str(manifest_path))
            raise FileExistsError(
                f"{out} holds a dataset curated with another config ({manifest_path}); "
                "use another --out or delete it"
            )
        # built before any work, so weights that cannot be had fail at start-up, not after the shards
        encoder = make_text_encoder(job.curation.text, text_encoder)
        work = out / WORK_DIR
        digest_file = work / "digest"
        stamp = f"{job.digest()} work-layout {WORK_LAYOUT} schema {SCHEMA_VERSION}"
        if work.exists() and (not digest_file.exists() or digest_file.read_text() != stamp):
            log(f"{work} is from another config or code version: starting over")
            shutil.rmtree(work)
            shutil.rmtree(out / "data", ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(digest_file, stamp.encode())

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster
                ray.init(log_to_driver=True)
            else:  # in-process; "local" so a cluster left running on this machine is not joined
                ray.init(
                    address="local", num_cpus=job.run.num_cpus, include_dashboard=False, log_to_driver=True
                )
        cpus = int(ray.cluster_resources().get("CPU", 1))
        warm_workers(cpus, job.run.episode_num_cpus)  # their imports overlap the driver's start
        ray.data.DataContext.get_current().enable_progress_bars = job.run.progress
        started = time.time()

        found = discover_all(job, work, cpus)
        parts = make_samples(job, work, found, caption_model)

        records = [rec for p in parts for rec in read_records(p)]
        outcome = settle(records, [Rejection.from_row(r) for r in found["rejections"]], job.curation)
        log(f"phase 3 (dedup): {len(outcome.duplicates)} near-duplicate episodes dropped")
        rejections = outcome.rejections

        stats = compute_stats(parts, job.curation.norm, outcome.duplicates)
        log(f"phase 4 (stats): {', '.join(f'{k}: {v.action.count} action values' for k, v in stats.items())}")
        shards = write_shards(out, parts, stats, job.curation, outcome.duplicates)
        samples = sum(s.rows for s in shards)
        episode_rejections = [r for r in rejections if r.window < 0]
        counts = {
            "episodes_in": outcome.stage_counts["ingest"]["in"],
            "episodes_with_samples": outcome.episodes_with_samples,
            "episodes_rejected": len(episode_rejections),
            "windows_in": outcome.windows_in,
            "samples": samples,
            "windows_rejected": outcome.window_rejections,
        }
        stage_counts = dict(outcome.stage_counts)
        stage_counts["windows"] = {
            "in": outcome.windows_in,
            "out": samples,
            "rejected": outcome.window_rejections,
        }
        stage_counts["caption"] = {"in": samples, "out": samples, "rejected": 0}
        text = embed_instructions(out, shards, encoder) if samples else None
        if text is not None:
            log(f"text: {len(text['instructions'])} unique instructions embedded by {text['encoder']}")
        sources = tuple(
            SourceInput(
                path,
                found["source_formats"].get(path, "unknown"),
                source_digest(path),
                found["source_inputs"].get(path, 0),  # all its inputs, a repeat's rejection with them
            )
            for path in dict.fromkeys(s.path for s in job.sources)  # a path given twice: one entry
        )
        manifest = Manifest(
            code_version=CODE_VERSION,
            config={**job.content_config(), "digest": job.digest()},
            counts=counts,
            stats=stats,
            sources=sources,
            shards=tuple(shards),
            rejections=tuple(sorted(rejections, key=lambda r: (r.stage, r.path, r.episode, r.window))),
            stage_counts=stage_counts,
            text=text,
        )
        ledger_rows = list(manifest.rejections)
        if ledger_rows:
            atomic_write_table(out / LEDGER_PATH, to_table(ledger_rows))
        write_manifest(out, manifest)
        log(
            f"done in {time.time() - started:.1f}s: {counts['episodes_in']} episodes in, "
            f"{counts['episodes_with_samples']} gave {samples} samples in {len(shards)} shards, "
            f"{counts['episodes_rejected']} rejected"
        )
    if job.run.report:
        try:
            from curation.report import write_report

            log(f"data report: {write_report(out)}")
        except Exception as err:  # the dataset is complete; a report failure must not hide that
            print(f"data report failed: {type(err).__name__}: {err}", file=sys.stderr)
    return manifest
