"""The curation job: heterogeneous sources → validated, normalised Parquet shards + manifest.

Runs on Ray Data, in-process by default or on the cluster named by ``RAY_ADDRESS`` (which
``ray job submit`` sets). Stages (DESIGN.md §4), with row cardinality::

    phase 1  screen   discover (1 source → N refs) → load + filters (1:1) → dedup (N:1, driver)
    phase 2  samples  episode → decode, compose, window, encode (1:1 episode row holding N
                      samples) → captions + CLIP (actor pool, batched) → work parts
    phase 3  stats    one task per work part (N:1 sketches) → merged per embodiment
    phase 4  shards   normalise (1:1) → pack in a fixed order into shards of a target size
    phase 5  manifest (with ledger, stats, lineage, stage accounting) → data report

Resumable and deterministic: phase 1 is saved in ``.work/screen.json``; phase 2 writes one
work part per group of episodes (sorted by id) atomically and a rerun skips finished
parts; statistics merge in part order; shards are cut from the rows in (episode id, start
frame) order and written atomically, a rerun skipping complete ones. So a run interrupted
anywhere and rerun gives shards with the same content as an uninterrupted run.

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
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from curation.config import CaptionConfig, CurationConfig, config_from_dict, get_preset
from curation.episode_samples import EpisodeCaptioner, make_episode_fn, table_from_bytes
from curation.formats import EpisodeRef, detect_format
from curation.ingest import SourceSpec, _discover_row, _rejection, load
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
from curation.stages.filters import check_episode, make_dedup_rejections
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


@dataclass(frozen=True)
class RunConfig:
    """How the job runs (resources, granularity); never changes what it produces."""

    episodes_per_part: int = 16
    screen_num_cpus: float = 0.5  # load + filters: light decode of sampled frames
    episode_num_cpus: float = 1.0  # full decode + compose + encode of one episode
    caption_num_cpus: float = 0.5  # per caption actor: fractional so reads keep running (§4)
    caption_actors: int = 1
    caption_episodes_per_batch: int = 4
    num_cpus: int | None = None  # in-process Ray only; None = all cores
    progress: bool = True


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


# ---- phase 1: screen ----------------------------------------------------------------


def make_screen_fn(cfg: CurationConfig):
    """Per-row (1:1): a discovered ref → its verdict (all JSON strings: one block schema)."""

    def screen_row(row: dict[str, Any]) -> dict[str, Any]:
        if row["kind"] == "rejection":
            payload = {"rejection": row["rejection"], "root": row["rejection"]["path"]}
            return {"kind": "rejection", "episode_id": "", "payload": json.dumps(payload)}
        ref = EpisodeRef.from_row(json.loads(row["ref"]))
        item = load(ref)
        if isinstance(item, Rejection):
            payload = {"rejection": item.to_row(), "root": ref.root}
            return {"kind": "rejection", "episode_id": "", "payload": json.dumps(payload)}
        try:
            verdict = check_episode(item, cfg.filters)
        except Exception as err:  # an unreadable video found while sampling frames
            rej = _rejection(err, "filter", ref.path, item.episode_id, item.source)
            payload = {"rejection": rej.to_row(), "root": ref.root}
            return {"kind": "rejection", "episode_id": "", "payload": json.dumps(payload)}
        payload = {
            "root": ref.root,
            "ref": row["ref"],
            "episode_id": item.episode_id,
            "source": item.source,
            "source_path": item.source_path or ref.path,
            "embodiment": item.embodiment,
            "length": item.length,
            "quality": verdict.quality,
            "fingerprint": [format(h, "016x") for h in verdict.fingerprint],
            "rejection": None if verdict.rejection is None else verdict.rejection.to_row(),
        }
        kind = "rejection" if verdict.rejection is not None else "episode"
        return {"kind": kind, "episode_id": item.episode_id, "payload": json.dumps(payload)}

    return screen_row


def screen(job: CurateJob, work: Path) -> dict[str, Any]:
    """Phase 1, saved to ``.work/screen.json``: accepted episodes and the rejections so far."""
    import ray

    path = work / "screen.json"
    if path.exists():
        saved = json.loads(path.read_text())
        log(f"phase 1 (screen): reusing {path} ({len(saved['accepted'])} accepted episodes)")
        return saved
    specs = [s.to_row() for s in job.sources]
    ds = ray.data.from_items(specs, override_num_blocks=max(1, len(specs)))
    # discover: 1 source -> N episode refs, metadata only (an unlistable source -> 1 rejection)
    ds = ds.flat_map(_discover_row, num_cpus=0.25)
    # load + validate + filters: 1:1; decodes only a few low-res sampled frames per episode
    ds = ds.map(make_screen_fn(job.curation), num_cpus=job.run.screen_num_cpus)
    rows = sorted(ds.take_all(), key=lambda r: (r["kind"], r["episode_id"], r["payload"]))
    discovered = [json.loads(r["payload"]) for r in rows]
    rejections = [Rejection.from_row(p["rejection"]) for p in discovered if p.get("rejection")]
    passed = [p for p in discovered if not p.get("rejection")]
    counts = _screen_counts(rejections, len(discovered), len(passed))
    # near-duplicates: N:1 over the fingerprints of every passing episode, on the driver
    dup = (
        make_dedup_rejections(passed, job.curation.filters)
        if "duplicate" in job.curation.filters.enabled
        else []
    )
    dup_ids = {r.episode for r in dup}
    accepted = sorted((p for p in passed if p["episode_id"] not in dup_ids), key=lambda p: p["episode_id"])
    counts["dedup"] = {"in": len(passed), "out": len(accepted), "rejected": len(dup)}
    saved = {
        "accepted": accepted,
        "rejections": [r.to_row() for r in [*rejections, *dup]],
        "inputs": len(discovered),
        "stage_counts": counts,
        "source_formats": {s.path: s.format or _safe_detect(s.path) for s in job.sources},
        "source_inputs": dict(Counter(_source_path(p["root"], job.sources) for p in discovered)),
    }
    atomic_write_bytes(path, json.dumps(saved).encode())
    log(
        f"phase 1 (screen): {len(discovered)} inputs, {len(accepted)} accepted, {len(rejections) + len(dup)} rejected"
    )
    return saved


def _source_path(root: str, sources: tuple[SourceSpec, ...]) -> str:
    """The configured source a reader root belongs to (RLDS resolves to a version folder inside it)."""
    for spec in sources:
        base = spec.path.rstrip("/")
        if root == spec.path or root.startswith(base + "/"):
            return spec.path
    return root


def _safe_detect(path: str) -> str:
    try:
        return detect_format(path)
    except Exception:
        return "unknown"


def _screen_counts(rejections: list[Rejection], inputs: int, passed: int) -> dict[str, dict[str, int]]:
    by_stage = defaultdict(int)
    for r in rejections:
        by_stage[r.stage.split(".")[0]] += 1
    loaded = inputs - by_stage["discover"] - by_stage["load"]
    return {
        "ingest": {"in": inputs, "out": loaded, "rejected": by_stage["discover"] + by_stage["load"]},
        "filter": {"in": loaded, "out": passed, "rejected": by_stage["filter"]},
    }


# ---- phase 2: samples ---------------------------------------------------------------


def part_path(work: Path, group: int) -> Path:
    return work / "parts" / f"part-{group:05d}.parquet"


def make_samples(job: CurateJob, work: Path, accepted: list[dict[str, Any]]) -> None:
    """Phase 2: one work part (raw sample rows + the group's ledger) per group of episodes."""
    import ray

    per = job.run.episodes_per_part
    groups = [accepted[i : i + per] for i in range(0, len(accepted), per)]
    pending = {g: eps for g, eps in enumerate(groups) if not part_path(work, g).exists()}
    log(f"phase 2 (samples): {len(groups)} parts, {len(groups) - len(pending)} already done")
    if not pending:
        return
    items = [
        {"group": g, "ref": ep["ref"], "quality": json.dumps(ep["quality"])}
        for g, eps in sorted(pending.items())
        for ep in eps
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # decode + compose + window + encode: 1 episode row -> 1 row holding its N samples;
    # a whole CPU each: this is the decode-bound stage
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
            log(f"phase 2 (samples): part {g} written ({done}/{len(pending)})")


def _write_part(work: Path, group: int, episode_rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    from curation.episode_samples import RAW_SCHEMA

    tables = [table_from_bytes(r["table"]) for r in episode_rows if len(r["table"])]
    table = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    table = table.sort_by([("episode_id", "ascending"), ("start_frame", "ascending")])
    ledger = sorted(
        (
            {
                "episode_id": r["episode_id"],
                "windows_in": int(r["windows_in"]),
                "rejected": bool(r["rejected"]),
                "ledger": json.loads(r["ledger"]),
            }
            for r in episode_rows
        ),
        key=lambda e: e["episode_id"],
    )
    meta = {b"gwp_ledger": json.dumps(ledger).encode()}
    atomic_write_table(part_path(work, group), table.replace_schema_metadata(meta))


def read_part(path: Path):
    table = pq.read_table(path)
    ledger = json.loads(table.schema.metadata[b"gwp_ledger"])
    return table, ledger


# ---- phase 3: statistics ------------------------------------------------------------


def part_stats(path: str, sketch_k: int) -> dict[str, bytes]:
    """Sketches of one work part, per embodiment, in the training representation (N:1)."""
    table = pq.read_table(path, columns=["embodiment", "raw_action", "raw_state", "valid_steps"])
    accs: dict[str, StatsAccumulator] = {}
    for row in table.to_pylist():
        emb = row["embodiment"]
        spec = get_embodiment(emb)
        acc = accs.get(emb) or accs.setdefault(emb, StatsAccumulator(emb, sketch_k))
        state = np.asarray(row["raw_state"], dtype=np.float64)
        action = np.asarray(row["raw_action"], dtype=np.float64)[: row["valid_steps"]]
        acc.add_values(to_training_action(action, state, spec), state[None])
    return {emb: acc.to_bytes() for emb, acc in accs.items()}


def compute_stats(job: CurateJob, parts: list[Path]) -> dict[str, EmbodimentStats]:
    import ray

    remote = ray.remote(num_cpus=0.5)(part_stats)
    k = job.curation.norm.sketch_k
    results = ray.get([remote.remote(str(p), k) for p in parts])  # in part order: deterministic merge
    merged: dict[str, StatsAccumulator] = {}
    for res in results:
        for emb, blob in sorted(res.items()):
            acc = StatsAccumulator.from_bytes(blob)
            merged[emb] = merged[emb].merge(acc) if emb in merged else acc
    return {emb: acc.finalize(job.curation.norm) for emb, acc in sorted(merged.items())}


# ---- phase 4: shards ----------------------------------------------------------------


def normalised_rows(table, stats: dict[str, EmbodimentStats], cfg: CurationConfig):
    for row in table.to_pylist():
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


def write_shards(out: Path, parts: list[Path], stats, cfg: CurationConfig):
    sc = cfg.shards
    shards, buffer, size = [], [], 0

    def flush():
        nonlocal buffer, size
        info = write_shard(
            out, len(shards), buffer, compression=sc.compression, row_group_rows=sc.row_group_rows
        )
        shards.append(info)
        log(f"phase 4 (shards): {info.name} ({info.rows} rows)")
        buffer, size = [], 0

    for path in parts:
        table, _ = read_part(path)
        for row, nbytes in normalised_rows(table, stats, cfg):
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


# ---- phase 5: manifest --------------------------------------------------------------


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
        if work.exists() and (not digest_file.exists() or digest_file.read_text() != job.digest()):
            log(f"{work} is from another config: starting over")
            shutil.rmtree(work)
            shutil.rmtree(out / "data", ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(digest_file, job.digest().encode())

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster
                ray.init(log_to_driver=True)
            else:  # in-process; "local" so a cluster left running on this machine is not joined
                ray.init(
                    address="local", num_cpus=job.run.num_cpus, include_dashboard=False, log_to_driver=True
                )
        ray.data.DataContext.get_current().enable_progress_bars = job.run.progress
        started = time.time()

        screened = screen(job, work)
        accepted = screened["accepted"]
        make_samples(job, work, accepted)
        per = job.run.episodes_per_part
        parts = [part_path(work, g) for g in range((len(accepted) + per - 1) // per)]

        rejections = [Rejection.from_row(r) for r in screened["rejections"]]
        windows_in = episodes_with_samples = decode_rejected = window_rejected_eps = 0
        window_rejections = 0
        for p in parts:
            _, ledger = read_part(p)
            for ep in ledger:
                windows_in += ep["windows_in"]
                recs = [Rejection.from_row(r) for r in ep["ledger"]]
                rejections += recs
                window_rejections += sum(1 for r in recs if r.window >= 0)
                if ep["rejected"]:
                    if any(r.stage == "decode" or r.stage == "load" for r in recs):
                        decode_rejected += 1
                    else:
                        window_rejected_eps += 1
                else:
                    episodes_with_samples += 1

        stats = compute_stats(job, [p for p in parts if pq.ParquetFile(p).metadata.num_rows])
        log(f"phase 3 (stats): {', '.join(f'{k}: {v.action.count} action values' for k, v in stats.items())}")
        shards = write_shards(out, parts, stats, job.curation)
        samples = sum(s.rows for s in shards)
        episode_rejections = [r for r in rejections if r.window < 0]
        counts = {
            "episodes_in": screened["inputs"],
            "episodes_with_samples": episodes_with_samples,
            "episodes_rejected": len(episode_rejections),
            "windows_in": windows_in,
            "samples": samples,
            "windows_rejected": window_rejections,
        }
        stage_counts = dict(screened["stage_counts"])
        stage_counts["decode"] = {
            "in": len(accepted),
            "out": len(accepted) - decode_rejected,
            "rejected": decode_rejected,
        }
        stage_counts["window"] = {
            "in": len(accepted) - decode_rejected,
            "out": episodes_with_samples,
            "rejected": window_rejected_eps,
        }
        stage_counts["windows"] = {"in": windows_in, "out": samples, "rejected": window_rejections}
        stage_counts["caption"] = {"in": samples, "out": samples, "rejected": 0}
        sources = tuple(
            SourceInput(
                s.path,
                screened["source_formats"].get(s.path, "unknown"),
                source_digest(s.path),
                screened["source_inputs"].get(s.path, 0),
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
            f"done in {time.time() - started:.0f}s: {counts['episodes_in']} episodes in, "
            f"{counts['episodes_with_samples']} gave {samples} samples in {len(shards)} shards, "
            f"{counts['episodes_rejected']} rejected"
        )
    try:
        from curation.report import write_report

        log(f"data report: {write_report(out)}")
    except Exception as err:  # the dataset is complete; a report failure must not hide that
        print(f"data report failed: {type(err).__name__}: {err}", file=sys.stderr)
    return manifest
