"""Shard files: deterministic names, atomic writes, manifest last, one writer at a time.

Layout of a curated dataset folder::

    <out>/data/shard-00000.parquet     Sample rows (schemas.Sample.arrow_schema())
    <out>/meta/manifest.json           written last: its presence means the run finished
    <out>/meta/rejections.parquet      the rejection ledger as a table
    <out>/meta/report/                 data report (index.md + PNG plots)
    <out>/.work/                       resumable intermediate results (not published)
    <out>/.lock                        held by the running job

Every file is written under a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so a reader — or a rerun after a crash — never sees a
partial shard. A rerun skips a shard whose file exists with the expected row count.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import SCHEMA_VERSION, Manifest, Sample, ShardInfo, check_schema_version

SHARD_TEMPLATE = "data/shard-{index:05d}.parquet"
MANIFEST_PATH = "meta/manifest.json"
LEDGER_PATH = "meta/rejections.parquet"
REPORT_DIR = "meta/report"
WORK_DIR = ".work"
LOCK_NAME = ".lock"


class OutputLockedError(RuntimeError):
    pass


@contextmanager
def exclusive_output(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the whole run; a second job on the same folder fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise OutputLockedError(
                f"{out}: another curation job ({holder}) is writing to this folder; wait for it or pick "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        yield
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_parquet_writer(
    path: Path, schema: pa.Schema, *, compression: str = "zstd"
) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer on a temporary name, fsynced and renamed to ``path`` when the block
    ends without an error (removed otherwise): ``path`` is complete or absent. Tables written
    one by one keep only one of them in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(
            tmp, schema, compression=None if compression == "none" else compression
        ) as writer:
            yield writer
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_table(
    path: Path, table: pa.Table, *, compression: str = "zstd", row_group_rows: int = 256
) -> None:
    """Write ``table`` to a temporary name, fsync, rename: ``path`` is complete or absent."""
    with atomic_parquet_writer(path, table.schema, compression=compression) as writer:
        writer.write_table(table, row_group_size=row_group_rows)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SAMPLE_METADATA = {"gwp_schema_version": SCHEMA_VERSION, "gwp_record": "Sample"}


def sample_table(rows: list[dict]) -> pa.Table:
    """A shard table from Sample rows (``Sample.to_row()``)."""
    return pa.Table.from_pylist(rows, schema=Sample.arrow_schema().with_metadata(SAMPLE_METADATA))


def shard_is_complete(path: Path, rows: int) -> bool:
    try:
        return pq.ParquetFile(path).metadata.num_rows == rows
    except Exception:  # missing or unreadable: write it again
        return False


def write_shard(
    out: Path, index: int, table: pa.Table, *, compression: str, row_group_rows: int
) -> ShardInfo:
    """Write (or, if already complete, keep) shard ``index``; ``table`` holds validated Sample
    rows (:func:`schemas.validate_sample_table`)."""
    path = out / SHARD_TEMPLATE.format(index=index)
    if not shard_is_complete(path, table.num_rows):
        table = table.replace_schema_metadata(SAMPLE_METADATA)
        atomic_write_table(path, table, compression=compression, row_group_rows=row_group_rows)
    return shard_info(out, index, table.num_rows)


def shard_info(out: Path, index: int, rows: int) -> ShardInfo:
    """The manifest entry of a written shard."""
    rel = SHARD_TEMPLATE.format(index=index)
    path = out / rel
    return ShardInfo(name=rel, rows=rows, sha256=file_sha256(path), bytes=path.stat().st_size)


def write_manifest(out: Path, manifest: Manifest) -> Path:
    manifest.validate()
    path = out / MANIFEST_PATH
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def read_manifest(out: str | Path) -> Manifest:
    path = Path(out) / MANIFEST_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no manifest — the curation run did not finish (or this is not a dataset)"
        )
    data = json.loads(path.read_text())
    check_schema_version(data.get("schema_version"), str(path))
    return Manifest.from_dict(data, where=str(path))


def content_digest(out: str | Path) -> str:
    """sha256 over the rows of every shard in order: equal for equal content, whatever the encoding."""
    h = hashlib.sha256()
    for path in sorted((Path(out) / "data").glob("shard-*.parquet")):
        table = pq.read_table(path)
        for row in table.to_pylist():
            h.update(
                json.dumps(row, sort_keys=True, default=lambda b: hashlib.sha256(b).hexdigest()).encode()
            )
    return h.hexdigest()
