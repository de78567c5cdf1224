"""Streaming training data: curated shards read one Parquet row group at a time over fsspec.

``--data`` may name a dataset that is not on local disk: any fsspec URL (``hf://datasets/owner/name``,
``s3://bucket/prefix``, ``file:///abs/path``, …) or, with ``--stream``, a Hub dataset repo id (read
through ``huggingface_hub.HfFileSystem``, which serves byte ranges). Nothing is downloaded up front:

1. :func:`open_streaming` reads ``meta/manifest.json`` and each shard's Parquet footer (a few
   range requests per shard: schema version, columns, row count, row-group sizes) and returns a
   :class:`pretrain.data.ShardSet` whose ``shards`` are :class:`RemoteShard` and whose ``stream`` is
   a :class:`RowGroupSource`;
2. the loader's epoch order is the local one (``pretrain.data.epoch_order`` over the same row
   counts), so streaming and local reading give identical batches; only *where rows come from*
   differs: ``ShardStream`` asks the source for a shard and gets a :class:`StreamedShard`, whose
   ``take(rows)`` fetches just the row groups holding those rows;
3. fetched row groups go through :class:`RowGroupCache`, an LRU of Arrow IPC files on local disk
   bounded in bytes (``StreamConfig.cache_mb``, the ``--stream-cache-mb`` flag): a row group is read
   remotely once while it stays cached, the least recently used ones are deleted past the bound.
   Each reader (rank × dataloader worker) has its own folder and an equal share of the bound, so
   readers never evict each other's files and the total stays within the bound. A single row
   group larger than a reader's share is still served (kept until the next one arrives).

Cost: the shuffle buffer (``LoaderConfig.shuffle_shards`` shards) draws rows from all of its
row groups in random order; a cache smaller than one buffer re-fetches row groups (correct,
slower). Size the cache to a buffer's row groups to read every byte once per epoch.

Position: the loader's state is the local one (epoch, batch in epoch, seed …), plus, for a
streamed dataset, the row group and row within it where the next batch starts
(:meth:`RowGroupSource.locate`); resume re-derives the order from the seed, so it continues at
exactly that row whatever was cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import Manifest, Sample, SchemaError, check_schema_version
from schemas.sample import OPTIONAL_COLUMNS
from schemas.text_store import TextStore

if TYPE_CHECKING:
    from pretrain.data import ShardSet

MANIFEST_FILE = "meta/manifest.json"
# bytes per remote read: pyarrow asks for a footer or one column chunk at a time, and a small
# block keeps a read of one row group from pulling in its neighbours (the filesystems' defaults
# are several MiB, the size of a whole shard of small samples)
READ_BLOCK = 256 * 1024


def is_url(text: str) -> bool:
    """An fsspec URL (``scheme://…``) rather than a local path or a bare repo id."""
    return "://" in text and not text.startswith(("/", "."))


def hub_url(repo_id: str, revision: str | None) -> str:
    """The ``hf://`` URL of a Hub dataset repo at ``revision`` (a branch with ``/`` is %-quoted)."""
    at = f"@{quote(revision, safe='')}" if revision else ""
    return f"hf://datasets/{repo_id}{at}"


@dataclass(frozen=True)
class StreamConfig:
    cache_mb: float = 1024.0  # local disk held by fetched row groups, over every reader of a process
    cache_dir: str | None = None  # None: a temporary folder, removed when the process ends

    def validate(self) -> StreamConfig:
        if not self.cache_mb > 0:
            raise ValueError(f"StreamConfig: cache_mb must be > 0, got {self.cache_mb!r}")
        return self


@dataclass(frozen=True)
class RemoteShard:
    """One shard of a streamed dataset: its manifest name and full URL (``str()`` is the URL)."""

    url: str
    name: str
    sha256: str = ""  # the manifest's content hash: cached row groups of an older version never match

    def __str__(self) -> str:
        return self.url


def _url_fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def read_shard_columns(path: Any, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a whole shard, local or streamed (only those column chunks are fetched)."""
    if isinstance(path, RemoteShard):
        fs, p = _url_fs(path.url)
        with fs.open(p, "rb", block_size=READ_BLOCK) as f:
            return pq.ParquetFile(f).read(columns=list(columns))
    return pq.read_table(path, columns=list(columns))


# ---- the disk cache ------------------------------------------------------------------------------


class RowGroupCache:
    """LRU of Arrow tables on local disk, at most ``max_bytes`` of files (one file per key).

    Files are written to a temporary name and renamed, so a reader killed mid-write leaves no
    half file; files already in ``root`` (a previous run's) are adopted, oldest first in line.
    """

    def __init__(self, root: Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: OrderedDict[str, int] = OrderedDict()
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        found = sorted(self.root.glob("*.arrow"), key=lambda p: p.stat().st_mtime)
        for p in found:
            self._files[p.stem] = p.stat().st_size
        self.fetches = 0  # remote reads done (what a test counts)
        self._evict(keep=None)

    @property
    def bytes(self) -> int:
        return sum(self._files.values())

    def get(self, key: str, fetch: Callable[[], pa.Table]) -> pa.Table:
        path = self.root / f"{key}.arrow"
        if key in self._files:
            try:
                table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
                self._files.move_to_end(key)
                return table
            except (FileNotFoundError, pa.ArrowInvalid):  # removed or damaged outside: read it again
                self._files.pop(key, None)
        table = fetch()
        self.fetches += 1
        tmp = path.with_suffix(".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
        self._files[key] = path.stat().st_size
        self._evict(keep=key)
        return table

    def _evict(self, keep: str | None) -> None:
        while self.bytes > self.max_bytes and len(self._files) > (1 if keep else 0):
            old = next(iter(self._files))
            if old == keep:  # the only file left is the one being served
                break
            del self._files[old]
            (self.root / f"{old}.arrow").unlink(missing_ok=True)


# ---- row groups of the shards ----------------------------------------------------------------------


class RowGroupSource:
    """Where a streamed dataset's rows come from: row-group layout per shard, fetch through a cache.

    Picklable (dataloader workers get a copy): the filesystem and cache are made on first use in
    each process, the cache in its own folder per (rank, worker).
    """

    def __init__(self, shards: Sequence[RemoteShard], group_rows: Sequence[Sequence[int]], cfg: StreamConfig):
        self.shards, self.cfg = tuple(shards), cfg.validate()
        self.starts = [np.concatenate([[0], np.cumsum(g)]).astype(np.int64) for g in group_rows]
        self._identity = hashlib.sha256(json.dumps([s.url for s in self.shards]).encode()).hexdigest()[:16]
        self._cache: RowGroupCache | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None, "_tmp": None}

    def cache(self) -> RowGroupCache:
        if self._cache is None:
            import torch

            from pretrain import distributed as dd

            info = torch.utils.data.get_worker_info()
            w, nw = (0, 1) if info is None else (info.id, info.num_workers)
            if self.cfg.cache_dir:
                base = Path(self.cfg.cache_dir)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="gwp-stream-")
                base = Path(self._tmp.name)
            folder = base / f"rank{dd.env_rank():05d}-worker{w:03d}"
            self._cache = RowGroupCache(folder, int(self.cfg.cache_mb * 2**20 / nw))
        return self._cache

    def num_groups(self, shard: int) -> int:
        return len(self.starts[shard]) - 1

    def locate(self, shard: int, row: int) -> tuple[int, int]:
        """``(row group, row within it)`` of row ``row`` of ``shard``."""
        g = int(np.searchsorted(self.starts[shard], row, side="right") - 1)
        return g, int(row - self.starts[shard][g])

    def row_group(self, shard: int, group: int, columns: Sequence[str]) -> pa.Table:
        src = self.shards[shard]
        key = f"{self._identity}|{src.url}|{src.sha256}|{group}|{','.join(columns)}"
        key = hashlib.sha256(key.encode()).hexdigest()

        def fetch() -> pa.Table:
            fs, p = _url_fs(src.url)
            try:
                with fs.open(p, "rb", block_size=READ_BLOCK) as f:
                    return pq.ParquetFile(f).read_row_group(group, columns=list(columns))
            except (OSError, pa.ArrowException) as err:
                raise OSError(
                    f"{src.url}: reading row group {group} failed: {type(err).__name__}: {err}"
                ) from err

        return self.cache().get(key, fetch)

    def shard(self, shard: int, columns: Sequence[str], selection: Sequence[int] | None) -> StreamedShard:
        return StreamedShard(self, shard, tuple(columns), selection)


class StreamedShard:
    """A shard as ``ShardStream`` uses a table: ``take(rows)`` (row numbers of the view) → table."""

    def __init__(self, source: RowGroupSource, shard: int, columns: tuple[str, ...], selection: Any):
        self.source, self.index, self.columns, self.selection = source, shard, columns, selection

    def take(self, indices: pa.Array) -> pa.Table:
        rows = np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.selection is not None:
            rows = np.asarray(self.selection, dtype=np.int64)[rows]
        starts = self.source.starts[self.index]
        groups = np.searchsorted(starts, rows, side="right") - 1
        wanted = sorted(set(groups.tolist()))
        tables = [self.source.row_group(self.index, g, self.columns) for g in wanted]
        base = dict(zip(wanted, np.cumsum([0] + [t.num_rows for t in tables[:-1]]).tolist(), strict=True))
        at = np.array([base[g] + r - starts[g] for g, r in zip(groups.tolist(), rows.tolist(), strict=True)])
        return pa.concat_tables(tables).take(pa.array(at, type=pa.int64()))


# ---- opening a streamed dataset ---------------------------------------------------------------------


def open_streaming(source: str, revision: str | None = None, cfg: StreamConfig | None = None) -> ShardSet:
    """A :class:`~pretrain.data.ShardSet` over ``source`` (fsspec URL or Hub dataset repo id), streamed."""
    from pretrain.data import ShardSet

    cfg = (cfg or StreamConfig()).validate()
    text = str(source).rstrip("/")
    if not is_url(text):
        text = hub_url(text, revision)
    elif revision:
        raise ValueError(f"dataset {text!r}: --data-revision applies to a Hub repo id, not to a URL")
    murl = f"{text}/{MANIFEST_FILE}"
    try:
        fs, mpath = _url_fs(murl)
        fs.invalidate_cache()  # fsspec keeps listings per filesystem instance: see the dataset as it is now
        with fs.open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{murl}: no manifest (no such repo, revision or folder, or the curation run did not finish: "
            f"the manifest is written last) [{err}]"
        ) from None
    except (ValueError, ImportError) as err:  # an unknown protocol, or its fsspec package missing
        raise ValueError(f"{murl}: cannot open this URL: {err}") from err
    except OSError as err:  # the storage did not answer: a failed job, not a wrong argument
        raise RuntimeError(f"{murl}: cannot read the manifest: {type(err).__name__}: {err}") from err
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{murl}: not valid JSON ({err})") from err
    check_schema_version(data.get("schema_version"), murl)
    try:
        manifest = Manifest.from_dict(data, murl)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{murl}: malformed manifest, missing or bad field {err}") from err
    if not manifest.shards:
        raise ValueError(f"{murl}: lists no shards; a streamed dataset needs them in its manifest")
    shards, rows, groups = [], [], []
    for info in manifest.shards:
        shard = RemoteShard(f"{text}/{info.name}", info.name, info.sha256 or "")
        n, g = _footer(shard, fs)
        if n != info.rows:
            raise ValueError(f"{shard.url}: has {n} rows, {murl} says {info.rows}")
        shards.append(shard)
        rows.append(n)
        groups.append(g)
    stream = RowGroupSource(shards, groups, cfg)
    store = None
    if manifest.text:  # the instructions' token states: one small file, read whole
        turl = f"{text}/{manifest.text['file']}"
        try:
            with fs.open(_url_fs(turl)[1], "rb") as f:
                store = TextStore.from_bytes(f.read(), manifest.text, turl, murl)
        except FileNotFoundError:
            raise FileNotFoundError(f"{turl}: instruction embeddings listed in {murl} but missing") from None
    return ShardSet(text, manifest, tuple(shards), tuple(rows), text=store, stream=stream)  # type: ignore[arg-type]


def _footer(shard: RemoteShard, fs: Any) -> tuple[int, list[int]]:
    """Row count and rows per row group of one shard, read from its footer; checks version and columns."""
    _, path = _url_fs(shard.url)
    try:
        with fs.open(path, "rb", block_size=READ_BLOCK) as f:
            meta = pq.ParquetFile(f).metadata
    except Exception as err:
        # a missing file surfaces at open (FileNotFoundError) or, from HTTP filesystems, at the
        # first read as their own "entry not found" error
        if isinstance(err, FileNotFoundError) or "EntryNotFound" in type(err).__name__:
            raise FileNotFoundError(f"{shard.url}: listed in the manifest but missing") from None
        if not isinstance(err, (OSError, pa.ArrowException)):
            raise
        raise ValueError(f"{shard.url}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    schema = meta.schema.to_arrow_schema()
    found = (schema.metadata or {}).get(b"gwp_schema_version")
    check_schema_version(found.decode() if found else None, shard.url)
    missing = set(Sample.arrow_schema().names) - set(schema.names) - set(OPTIONAL_COLUMNS)
    if missing:
        raise SchemaError(shard.url, "columns", f"missing {sorted(missing)}")
    return meta.num_rows, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
