"""A dataset's identity: a fingerprint of its files' content, cheap enough for the driver.

Episode ids derive from the dataset's identity, not from its name: two datasets written
by separate runs under the same folder name must never share ids, and the same dataset
given twice (the same path, or a byte-identical copy elsewhere) must be recognised as one.
So the identity is a hash over the dataset's files, each named by its path *relative to
the dataset root* (a copy at another path hashes alike), with::

    per file   path relative to the root ("." for a dataset that is one file), size, and
               size <= FULL_BYTES:  sha256 of the whole file (metadata, small tables)
               larger:              sha256 of the first and last EDGE_BYTES and of SAMPLES
                                    evenly spaced SAMPLE_BYTES blocks between them

A file therefore costs a bounded read (at most 96 KiB), whatever its size, and the files are
read by a few threads (the time is I/O latency, most of all on network storage): listing
runs on the driver before any worker starts. The sampled blocks catch what the edges miss when
two files share a layout (an HDF5 file's head holds its object headers, a Parquet file's
tail its footer with column statistics; both differ between datasets of different content,
and the samples land in the data between). Two large files equal in size, edges and every
sampled block but different elsewhere would collide; real recordings do not.

The fingerprint is the dataset id: 32 hex digits, prefixed with the format name so that
one set of bytes read by two readers (a forced format) gives two ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curation.formats.mapping import SIDECAR_NAME

FULL_BYTES = 64 << 10  # info.json, tasks, stats, a small table: whole
EDGE_BYTES = 16 << 10  # a Parquet footer, an HDF5 superblock, an mp4's moov box (or part)
SAMPLES = 16
SAMPLE_BYTES = 4 << 10
THREADS = 8


def dataset_files(root: Path) -> list[Path]:
    """The files that make up a dataset at ``root``: ``root`` itself if it is a file, else every
    regular file below it, hidden entries (``.work``, ``.cache``, editor files) left out, and so is
    the mapping sidecar: it says how to read the data, not what the data is (a copy given a
    ``gwp_source.json`` by ``gwp inspect --write`` is the same dataset, with the same ids, as it is
    for a one-file source whose sidecar lies beside it)."""
    if root.is_file():
        return [root]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in names if not n.startswith(".") and not n.endswith(SIDECAR_NAME)]
    return sorted(files)


def file_digest(path: Path) -> str:
    """sha256 of the whole file when small, else of its edges and sampled blocks (see module).

    A file that cannot be read hashes as its error: the dataset keeps an id, and the episodes
    in that file are rejected when they are loaded, each with its own reason, instead of the
    whole source failing at discovery."""
    try:
        return _digest(path)
    except OSError as err:
        return f"unreadable:{err.errno}"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h.update(f"{size}:".encode())
        if size <= FULL_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        step = (size - 2 * EDGE_BYTES - SAMPLE_BYTES) // (SAMPLES + 1)
        spans = [(0, EDGE_BYTES)]
        spans += [(EDGE_BYTES + step * (i + 1), SAMPLE_BYTES) for i in range(SAMPLES)]
        spans += [(size - EDGE_BYTES, EDGE_BYTES)]
        for offset, length in spans:
            fh.seek(offset)
            h.update(fh.read(length))
    return h.hexdigest()


def dataset_fingerprint(fmt: str, root: Path, files: Iterable[Path] | None = None) -> str:
    """The dataset id of the files ``files`` (default :func:`dataset_files`) under ``root``,
    read as format ``fmt``: independent of where the dataset lies and of what it is called."""
    root = Path(root)
    files = dataset_files(root) if files is None else sorted(files)
    h = hashlib.sha256(f"gwp-dataset:{fmt}\n".encode())
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        digests = list(pool.map(file_digest, files))
    for path, digest in zip(files, digests, strict=True):
        rel = "." if path == root else path.relative_to(root).as_posix()  # a one-file dataset: no name
        h.update(f"{rel}\0{digest}\n".encode())
    return f"{fmt}-{h.hexdigest()[:32]}"
