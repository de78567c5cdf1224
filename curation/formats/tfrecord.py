"""TFRecord files, without TensorFlow: framing, writer, scanner and reader of records.

Design:

* **Framing** (one record)::

      uint64  length                 little-endian
      uint32  masked_crc32c(length)  of the 8 length bytes
      byte    data[length]
      uint32  masked_crc32c(data)

  (the CRC is :mod:`curation.formats.crc32c`). Both CRCs are checked on read; a bad data CRC
  only spoils that one record (the next header is still found). A bad length CRC loses the
  framing: :func:`scan_records` reports that record and *resyncs*, searching the following
  bytes for the next offset whose length CRC and data CRC both hold (all 8-byte windows of a
  block are CRC'd at once in numpy; a false match needs two 32-bit CRCs to agree by chance).
  What it skipped is reported with the byte range; a file that ends inside a record, or has no
  intact record after a bad header, loses its remainder.
* The payloads are opaque here; RLDS stores one ``tf.train.Example`` per record
  (:mod:`curation.formats.tf_example`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from curation.formats.crc32c import masked_crc32c, window_masked_crcs

_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")


class TFRecordError(ValueError):
    """A TFRecord file is corrupt or truncated at ``offset`` (byte position of the record)."""

    def __init__(self, path: str | Path, offset: int, index: int, problem: str):
        self.path = str(path)
        self.offset = offset
        self.index = index
        self.problem = problem
        super().__init__(f"{path}: record {index} at byte {offset}: {problem}")


@dataclass(frozen=True)
class RecordSpan:
    """Where record ``index`` lies in its file; ``error`` set if framing was lost there."""

    index: int
    offset: int  # byte offset of the record header
    length: int  # payload bytes (0 when ``error``)
    error: str = ""


def frame_record(data: bytes) -> bytes:
    """``data`` wrapped in TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


class TFRecordWriter:
    """Appends framed records to a binary file; ``write`` returns the record's byte offset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()/__exit__
        self._offset = 0

    def write(self, data: bytes) -> int:
        offset = self._offset
        framed = frame_record(data)
        self._f.write(framed)
        self._offset += len(framed)
        return offset

    @property
    def offset(self) -> int:
        """Bytes written so far (= the offset the next record will get)."""
        return self._offset

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records(path: str | Path, records: Iterable[bytes]) -> list[int]:
    """Write all ``records`` to ``path``; the byte offset of each."""
    with TFRecordWriter(path) as w:
        return [w.write(r) for r in records]


_RESYNC_BLOCK = 1 << 20


def _intact_record_at(f: BinaryIO, offset: int, size: int) -> bool:
    f.seek(offset)
    head = f.read(_HEADER.size)
    length, length_crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8]) != length_crc or offset + _HEADER.size + length + _FOOTER.size > size:
        return False
    data = f.read(length)
    return masked_crc32c(data) == _FOOTER.unpack(f.read(_FOOTER.size))[0]


def find_next_record(f: BinaryIO, start: int, size: int) -> int | None:
    """Offset of the first intact record (both CRCs hold) at or after ``start``, or None."""
    pos = start
    while pos + _HEADER.size + _FOOTER.size <= size:
        f.seek(pos)
        block = f.read(_RESYNC_BLOCK + _HEADER.size - 1)
        n = len(block) - _HEADER.size + 1
        buf_B = np.frombuffer(block, dtype=np.uint8)
        stored = buf_B[8 : 8 + n].astype(np.uint32)  # the little-endian length CRC field
        for k in range(1, 4):
            stored |= buf_B[8 + k : 8 + k + n].astype(np.uint32) << np.uint32(8 * k)
        for cand in np.flatnonzero(window_masked_crcs(buf_B, n) == stored).tolist():
            if _intact_record_at(f, pos + cand, size):
                return pos + cand
        pos += n
    return None


def scan_records(path: str | Path) -> Iterator[RecordSpan]:
    """The records of ``path`` from their headers alone (payloads are skipped, not read).

    A header whose CRC fails yields a span with ``error`` set naming the bytes skipped, then
    the scan goes on from the next intact record (:func:`find_next_record`), numbering it as
    the next record (records inside the skipped bytes cannot be counted; the caller compares
    with the count it expected). A file that ends inside a record, or holds no intact record
    after a bad header, yields one final span with ``error`` set for its remainder.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset, index = 0, 0
        while offset < size:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                yield RecordSpan(index, offset, 0, f"truncated header ({len(head)} of {_HEADER.size} bytes)")
                return
            length, length_crc = _HEADER.unpack(head)
            if masked_crc32c(head[:8]) != length_crc:
                resync = find_next_record(f, offset + 1, size)
                if resync is None:
                    yield RecordSpan(
                        index,
                        offset,
                        0,
                        f"length CRC mismatch (corrupt header; framing lost): no intact record in "
                        f"bytes {offset}..{size}, the rest of the file is lost",
                    )
                    return
                yield RecordSpan(
                    index,
                    offset,
                    0,
                    f"length CRC mismatch (corrupt header): bytes {offset}..{resync} skipped, "
                    f"next intact record at byte {resync}",
                )
                f.seek(resync)
                offset, index = resync, index + 1
                continue
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                yield RecordSpan(
                    index, offset, 0, f"truncated: record needs {end - size} more bytes than the file has"
                )
                return
            yield RecordSpan(index, offset, length)
            f.seek(end)
            offset, index = end, index + 1


def read_record_at(f: BinaryIO, path: str | Path, offset: int, index: int = -1) -> bytes:
    """The payload of the record whose header starts at ``offset``, both CRCs verified."""
    f.seek(offset)
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise TFRecordError(path, offset, index, "truncated header")
    length, length_crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8]) != length_crc:
        raise TFRecordError(path, offset, index, "length CRC mismatch (corrupt header)")
    data = f.read(length)
    foot = f.read(_FOOTER.size)
    if len(data) < length or len(foot) < _FOOTER.size:
        raise TFRecordError(path, offset, index, f"truncated: file ends inside a {length}-byte record")
    if masked_crc32c(data) != _FOOTER.unpack(foot)[0]:
        raise TFRecordError(path, offset, index, "data CRC mismatch (corrupt payload)")
    return data


def iter_records(path: str | Path) -> Iterator[bytes]:
    """Every payload of ``path`` in order, CRCs verified; raises :class:`TFRecordError` at the first fault."""
    with open(path, "rb") as f:
        for span in scan_records(path):
            if span.error:
                raise TFRecordError(path, span.offset, span.index, span.error)
            yield read_record_at(f, path, span.offset, span.index)
