"""The curation job: heterogeneous sources → validated, normalised Parquet shards + manifest.

Runs on Ray Data, in-process by default or on the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). Stages (DESIGN.md §4), with row cardinality::

    phase 1  discover  1 source → N episode refs, metadata only (driver; a source that
                       cannot be listed → 1 rejection)
    phase 2  episodes  one pass per episode (Ray Data, several episodes per task): load →
                       filters → decode → compose → window → encode (1:1 episode row holding
                       its N samples, its verdict and its fingerprint) → captions + CLIP
                       (actor pool, batched) → work parts
    phase 3  dedup     near-duplicates over every fingerprint (N:1, driver); a duplicate's
                       samples are dropped
    phase 4  stats     one task per work part (N:1 sketches) → merged per embodiment
    phase 5  shards    normalise (1:1) → pack in a fixed order into shards of a target size
    phase 6  manifest  (with ledger, stats, lineage, stage accounting) → data report

Resumable and deterministic: phase 1 is saved in ``.work/discover.json``; phase 2 writes
one work part per group of ``episodes_per_part`` discovered episodes (in discovery order)
atomically, and a rerun skips finished parts; statistics merge in part order; shards are
cut from the rows in (part, episode id, start frame) order and written atomically, a rerun
skipping complete ones. So a run interrupted anywhere and rerun gives shards with the same
content as an uninterrupted run. How the job runs (``RunConfig``: episodes per task, CPUs)
never changes what it writes; ``episodes_per_part`` decides the order of the rows.

Every input ends up in the shards or in the ledger: the manifest's counts balance at
every stage (``Manifest.validate`` checks the totals).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from curation.config import CaptionConfig, CurationConfig, config_from_dict, get_preset
from curation.episode_samples import EpisodeCaptioner, make_episode_fn, table_from_bytes
from curation.formats import detect_format
from curation.ingest import SourceSpec, discover
from curation.shards import (
    LEDGER_PATH,
    MANIFEST_PATH,
    WORK_DIR,
    atomic_write_bytes,
    atomic_write_table,
    exclusive_output,
    write_manifest,
    write_shard,
)
from curation.stages.filters import make_dedup_rejections
from curation.stages.normalize import normalize_action, normalize_state, to_training_action
from curation.stages.stats import StatsAccumulator
from schemas import (
    SCHEMA_VERSION,
    EmbodimentStats,
    Manifest,
    Rejection,
    Sample,
    SourceInput,
    get_embodiment,
    to_table,
)

CODE_VERSION = "0.1.0"
WORK_LAYOUT = "2"  # of .work/: a work folder of another layout is started over


@dataclass(frozen=True)
class RunConfig:
    """How the job runs (resources, granularity); never changes what it produces."""

    episodes_per_part: int = 16  # resume granularity; also decides the order of the rows
    # longest run of consecutive episodes per Ray task (shorter when needed to give every CPU
    # a task): episodes packed in one video file (LeRobot v3.0) are then decoded front to back
    # by one decoder, whose read-ahead is wasted when it jumps between episodes (64 packed
    # episodes took twice the wall time and three times the CPU in tasks of 2)
    episodes_per_task: int = 16
    episode_num_cpus: float = 1.0  # the one pass over an episode is decode-bound: a whole CPU
    caption_num_cpus: float = 0.5  # per caption actor: fractional so reads keep running (§4)
    caption_actors: int = 1
    caption_episodes_per_batch: int = 4
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
    from curation.config import ConfigError, _build

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
        caption=None if caption is None else _build(CaptionConfig, caption, f"{where}.caption"),
        run=_build(RunConfig, data.get("run") or {}, f"{where}.run"),
    )


def log(msg: str) -> None:
    print(f"[curate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- phase 1: discover --------------------------------------------------------------


def discover_all(job: CurateJob, work: Path) -> dict[str, Any]:
    """Phase 1, saved to ``.work/discover.json``: every episode ref (in source order, then the
    reader's order) and a rejection per source that cannot be listed; the inputs of each
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
    for spec in job.sources:
        found, rejected = discover(spec)
        refs += [ref.to_row() for ref in found]
        rejections += [r.to_row() for r in rejected]
        source_inputs[spec.path] = source_inputs.get(spec.path, 0) + len(found) + len(rejected)
    saved = {
        "refs": refs,
        "rejections": rejections,
        "source_inputs": source_inputs,
        "source_formats": {s.path: s.format or _safe_detect(s.path) for s in job.sources},
    }
    atomic_write_bytes(path, json.dumps(saved).encode())
    log(
        f"phase 1 (discover): {len(refs)} episodes in {len(job.sources)} sources, {len(rejections)} unlistable"
    )
    return saved


def _safe_detect(path: str) -> str:
    try:
        return detect_format(path)
    except Exception:
        return "unknown"


# ---- phase 2: episodes --------------------------------------------------------------


def part_path(work: Path, group: int) -> Path:
    return work / "parts" / f"part-{group:05d}.parquet"


def make_samples(job: CurateJob, work: Path, refs: list[dict[str, Any]]) -> list[Path]:
    """Phase 2: one work part (raw sample rows + one record per episode) per group of refs;
    returns every part's path, in order."""
    import ray

    per = job.run.episodes_per_part
    groups = [refs[i : i + per] for i in range(0, len(refs), per)]
    pending = {g: rs for g, rs in enumerate(groups) if not part_path(work, g).exists()}
    parts = [part_path(work, g) for g in range(len(groups))]
    log(f"phase 2 (episodes): {len(groups)} parts, {len(groups) - len(pending)} already done")
    if not pending:
        return parts
    items = [{"group": g, "ref": json.dumps(r)} for g, rs in sorted(pending.items()) for r in rs]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_task = task_size(job.run.episodes_per_task, len(items), cpus)
    ctx = ray.data.DataContext.get_current()
    reservation = ctx.op_resource_reservation_enabled
    if job.caption is None:
        # a single operator: nothing to reserve CPUs for, and with the reservation on Ray Data
        # runs one task at a time until it has seen a task's output size (measured: the
        # second core idles for about the first task's length)
        ctx.op_resource_reservation_enabled = False
    try:
        _run_episodes(
            job, work, ray.data.from_items(items, override_num_blocks=-(-len(items) // per_task)), pending
        )
    finally:
        ctx.op_resource_reservation_enabled = reservation
    return parts


def task_size(longest: int, episodes: int, cpus: int) -> int:
    """Episodes per Ray task: at most ``longest``, and few enough that each CPU gets a task."""
    return max(1, min(longest, -(-episodes // max(1, cpus))))


def _run_episodes(job: CurateJob, work: Path, ds, pending: dict[int, list[dict[str, Any]]]) -> None:
    # load + filters + decode + compose + window + encode: 1 ref row -> 1 row holding the
    # episode's N samples and its record; one task per block of episodes_per_task refs
    ds = ds.map(make_episode_fn(job.curation), num_cpus=job.run.episode_num_cpus)
    if job.caption is not None:
        # captions + CLIP: actor pool (model loaded once per actor), batched over episodes
        ds = ds.map_batches(
            EpisodeCaptioner,
            fn_constructor_kwargs={"caption_cfg": job.caption},
            batch_size=job.run.caption_episodes_per_batch,
            batch_format="numpy",
            num_cpus=job.run.caption_num_cpus,
            concurrency=job.run.caption_actors,
        )
    buffers: dict[int, list[dict[str, Any]]] = defaultdict(list)
    done = 0
    for row in ds.iter_rows():
        g = int(row["group"])
        buffers[g].append(row)
        if len(buffers[g]) == len(pending[g]):
            _write_part(work, g, buffers.pop(g))
            done += 1
            log(f"phase 2 (episodes): part {g} written ({done}/{len(pending)})")


def _write_part(work: Path, group: int, episode_rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    from curation.episode_samples import RAW_SCHEMA

    tables = [table_from_bytes(r["table"]) for r in episode_rows if len(r["table"])]
    table = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    table = table.sort_by([("episode_id", "ascending"), ("start_frame", "ascending")])
    records = sorted(
        (json.loads(r["record"]) for r in episode_rows), key=lambda e: (e["episode_id"], e["label"])
    )
    meta = {b"gwp_ledger": json.dumps(records).encode()}
    atomic_write_table(part_path(work, group), table.replace_schema_metadata(meta))


def read_part(path: Path):
    """``(raw sample rows, episode records)`` of one work part."""
    table = pq.read_table(path)
    records = json.loads(table.schema.metadata[b"gwp_ledger"])
    return table, records


def read_records(path: Path) -> list[dict[str, Any]]:
    return json.loads(pq.read_schema(path).metadata[b"gwp_ledger"])


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


def part_stats(path: str, sketch_k: int, exclude: frozenset[str] = frozenset()) -> dict[str, bytes]:
    """Sketches of one work part, per embodiment, in the training representation (N:1);
    rows of the episodes in ``exclude`` (near-duplicates) are left out."""
    table = pq.read_table(
        path, columns=["episode_id", "embodiment", "raw_action", "raw_state", "valid_steps"]
    )
    accs: dict[str, StatsAccumulator] = {}
    for row in table.to_pylist():
        if row["episode_id"] in exclude:
            continue
        emb = row["embodiment"]
        spec = get_embodiment(emb)
        acc = accs.get(emb) or accs.setdefault(emb, StatsAccumulator(emb, sketch_k))
        state = np.asarray(row["raw_state"], dtype=np.float64)
        action = np.asarray(row["raw_action"], dtype=np.float64)[: row["valid_steps"]]
        acc.add_values(to_training_action(action, state, spec), state[None])
    return {emb: acc.to_bytes() for emb, acc in accs.items()}


def compute_stats(
    job: CurateJob, parts: list[Path], exclude: frozenset[str] = frozenset()
) -> dict[str, EmbodimentStats]:
    import ray

    remote = ray.remote(num_cpus=0.5)(part_stats)
    k = job.curation.norm.sketch_k
    ex = ray.put(exclude)
    results = ray.get([remote.remote(str(p), k, ex) for p in parts])  # in part order: deterministic merge
    merged: dict[str, StatsAccumulator] = {}
    for res in results:
        for emb, blob in sorted(res.items()):
            acc = StatsAccumulator.from_bytes(blob)
            merged[emb] = merged[emb].merge(acc) if emb in merged else acc
    return {emb: acc.finalize(job.curation.norm) for emb, acc in sorted(merged.items())}


# ---- phase 5: shards ----------------------------------------------------------------


def normalised_rows(
    table, stats: dict[str, EmbodimentStats], cfg: CurationConfig, exclude: frozenset[str] = frozenset()
):
    for row in table.to_pylist():
        if row["episode_id"] in exclude:
            continue
        spec = get_embodiment(row["embodiment"])
        st = stats[row["embodiment"]]
        raw_state = np.asarray(row["raw_state"], dtype=np.float32)
        action, action_mask = normalize_action(
            np.asarray(row["raw_action"], np.float32), raw_state, spec, st, cfg.norm
        )
        state, state_mask = normalize_state(raw_state, spec, st, cfg.norm)
        quality = {k: v for k, v in (row["quality"] or {}).items() if v is not None}
        emb = row.get("text_embedding")
        sample = Sample(
            sample_id=row["sample_id"],
            episode_id=row["episode_id"],
            source=row["source"],
            embodiment=row["embodiment"],
            embodiment_id=row["embodiment_id"],
            start_frame=row["start_frame"],
            frame_indices=tuple(row["frame_indices"]),
            instruction=row["instruction"],
            caption=row["caption"] or "",
            video=row["video"],
            video_format=row["video_format"],
            height=row["height"],
            width=row["width"],
            action=action,
            action_mask=action_mask,
            state=state,
            state_mask=state_mask,
            quality=quality,
            text_embedding=None if emb is None else np.asarray(emb, dtype=np.float32),
            latent_shape=tuple(row["latent_shape"] or ()),
        ).validate()
        yield (
            sample.to_row(),
            len(row["video"]) + 4 * (action.size + 2 * 32 + (0 if emb is None else len(emb))),
        )


def write_shards(
    out: Path, parts: list[Path], stats, cfg: CurationConfig, exclude: frozenset[str] = frozenset()
):
    sc = cfg.shards
    shards, buffer, size = [], [], 0

    def flush():
        nonlocal buffer, size
        info = write_shard(
            out, len(shards), buffer, compression=sc.compression, row_group_rows=sc.row_group_rows
        )
        shards.append(info)
        log(f"phase 5 (shards): {info.name} ({info.rows} rows)")
        buffer, size = [], 0

    for path in parts:
        table, _ = read_part(path)
        for row, nbytes in normalised_rows(table, stats, cfg, exclude):
            if buffer and (size + nbytes > sc.target_bytes or len(buffer) >= sc.max_rows):
                flush()
            buffer.append(row)
            size += nbytes
    if buffer:
        flush()
    # a shard left over from an interrupted run with more shards would be stale: remove it
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


def run(job: CurateJob) -> Manifest:
    """Run (or resume) the whole job; returns the manifest."""
    import ray

    out = Path(job.out)
    with exclusive_output(out):
        manifest_path = out / MANIFEST_PATH
        if manifest_path.exists():
            data = json.loads(manifest_path.read_text())
            if data.get("config", {}).get("digest") == job.digest():
                log(f"{out} is already curated with this config; nothing to do")
                return Manifest.from_dict(data, where=str(manifest_path))
            raise FileExistsError(
                f"{out} holds a dataset curated with another config ({manifest_path}); "
                "use another --out or delete it"
            )
        work = out / WORK_DIR
        digest_file = work / "digest"
        stamp = f"{job.digest()} work-layout {WORK_LAYOUT} per-part {job.run.episodes_per_part}"
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
        ray.data.DataContext.get_current().enable_progress_bars = job.run.progress
        started = time.time()

        found = discover_all(job, work)
        parts = make_samples(job, work, found["refs"])

        records = [rec for p in parts for rec in read_records(p)]
        outcome = settle(records, [Rejection.from_row(r) for r in found["rejections"]], job.curation)
        log(f"phase 3 (dedup): {len(outcome.duplicates)} near-duplicate episodes dropped")
        rejections = outcome.rejections

        with_rows = [p for p in parts if pq.ParquetFile(p).metadata.num_rows]
        stats = compute_stats(job, with_rows, outcome.duplicates)
        log(f"phase 4 (stats): {', '.join(f'{k}: {v.action.count} action values' for k, v in stats.items())}")
        shards = write_shards(out, with_rows, stats, job.curation, outcome.duplicates)
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
        sources = tuple(
            SourceInput(
                s.path,
                found["source_formats"].get(s.path, "unknown"),
                source_digest(s.path),
                found["source_inputs"].get(s.path, 0),
            )
            for s in job.sources
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
