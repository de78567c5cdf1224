"""``tf.train.Example`` messages, encoded and decoded without TensorFlow or protobuf.

Design (from the public ``example.proto`` / ``feature.proto``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

The encoder writes packed lists and sorted keys (deterministic bytes); the decoder also accepts
unpacked repeated scalars and skips unknown fields, as protobuf readers must. Decoding errors
are :class:`ExampleDecodeError` with the byte position; the records themselves come from
:mod:`curation.formats.tfrecord`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np


class ExampleDecodeError(ValueError):
    """The bytes are not a well-formed ``tf.train.Example``."""


@dataclass(frozen=True, eq=False)
class Feature:
    """One ``tf.train.Feature``: ``kind`` is "bytes", "float" or "int64".

    ``value`` is a tuple of bytes, a float32 [N] array or an int64 [N] array.
    """

    kind: str
    value: tuple[bytes, ...] | np.ndarray

    def __len__(self) -> int:
        return len(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Feature):
            return NotImplemented
        if self.kind != other.kind:
            return False
        if self.kind == "bytes":
            return tuple(self.value) == tuple(other.value)
        return np.array_equal(np.asarray(self.value), np.asarray(other.value))

    __hash__ = None  # type: ignore[assignment]


def bytes_feature(values: Iterable[bytes | str]) -> Feature:
    return Feature("bytes", tuple(v.encode() if isinstance(v, str) else bytes(v) for v in values))


def float_feature(values: Iterable[float] | np.ndarray) -> Feature:
    return Feature("float", np.asarray(values, dtype=np.float32).reshape(-1))


def int64_feature(values: Iterable[int] | np.ndarray) -> Feature:
    return Feature("int64", np.asarray(values, dtype=np.int64).reshape(-1))


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited (wire type 2) field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_feature(feat: Feature) -> bytes:
    if feat.kind == "bytes":
        inner = b"".join(_field(1, v) for v in feat.value)
        return _field(1, inner)
    if feat.kind == "float":
        packed = np.asarray(feat.value, dtype="<f4").tobytes()
        return _field(2, _field(1, packed) if packed else b"")
    if feat.kind == "int64":
        packed = b"".join(_varint(int(v)) for v in np.asarray(feat.value).tolist())
        return _field(3, _field(1, packed) if packed else b"")
    raise ValueError(f"unknown Feature kind {feat.kind!r}; expected bytes, float or int64")


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialised ``tf.train.Example`` with the given features (keys sorted)."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _encode_feature(features[key])))
        for key in sorted(features)
    )
    return _field(1, entries)


class _Cursor:
    """Reads protobuf wire format from a memoryview; errors carry the byte position."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int = 0, end: int | None = None):
        self.buf, self.pos, self.end = buf, pos, len(buf) if end is None else end

    def more(self) -> bool:
        return self.pos < self.end

    def varint(self) -> int:
        result, shift = 0, 0
        buf, pos = self.buf, self.pos
        while True:
            if pos >= self.end:
                raise ExampleDecodeError(f"varint runs past the end of its message at byte {self.pos}")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift >= 70:
                raise ExampleDecodeError(f"varint longer than 10 bytes at byte {self.pos}")
        self.pos = pos
        return result

    def tag(self) -> tuple[int, int]:
        key = self.varint()
        return key >> 3, key & 7

    def sub(self) -> _Cursor:
        """The length-delimited payload that starts here, as its own cursor."""
        n = self.varint()
        start = self.pos
        if start + n > self.end:
            raise ExampleDecodeError(
                f"field of {n} bytes at byte {start} runs past its message end {self.end}"
            )
        self.pos = start + n
        return _Cursor(self.buf, start, start + n)

    def bytes_(self) -> bytes:
        s = self.sub()
        return bytes(self.buf[s.pos : s.end])

    def messages(self, number: int) -> Iterator[_Cursor]:
        """Each length-delimited field ``number`` of this message as its own cursor; other fields skipped."""
        while self.more():
            num, wire = self.tag()
            if num == number and wire == 2:
                yield self.sub()
            else:
                self.skip(wire)

    def skip(self, wire: int) -> None:
        if wire == 0:
            self.varint()
        elif wire == 1:
            self.pos += 8
        elif wire == 2:
            self.sub()
        elif wire == 5:
            self.pos += 4
        else:
            raise ExampleDecodeError(f"unsupported wire type {wire} at byte {self.pos}")
        if self.pos > self.end:
            raise ExampleDecodeError(f"field runs past its message end {self.end}")


def _decode_list(c: _Cursor, kind: str) -> Feature:
    if kind == "bytes":
        vals: list[bytes] = []
        while c.more():
            num, wire = c.tag()
            if num == 1 and wire == 2:
                vals.append(c.bytes_())
            else:
                c.skip(wire)
        return Feature("bytes", tuple(vals))
    if kind == "float":
        chunks: list[np.ndarray] = []
        while c.more():
            num, wire = c.tag()
            if num == 1 and wire == 2:  # packed
                s = c.sub()
                if (s.end - s.pos) % 4:
                    raise ExampleDecodeError(
                        f"packed float list of {s.end - s.pos} bytes is not a multiple of 4"
                    )
                chunks.append(np.frombuffer(c.buf[s.pos : s.end], dtype="<f4").astype(np.float32))
            elif num == 1 and wire == 5:  # unpacked
                if c.pos + 4 > c.end:
                    raise ExampleDecodeError(f"float at byte {c.pos} runs past its message end {c.end}")
                chunks.append(np.frombuffer(c.buf[c.pos : c.pos + 4], dtype="<f4").astype(np.float32))
                c.pos += 4
            else:
                c.skip(wire)
        return Feature("float", np.concatenate(chunks) if chunks else np.zeros(0, np.float32))
    ints: list[int] = []
    while c.more():
        num, wire = c.tag()
        if num == 1 and wire == 2:  # packed
            s = c.sub()
            while s.more():
                ints.append(s.varint())
        elif num == 1 and wire == 0:  # unpacked
            ints.append(c.varint())
        else:
            c.skip(wire)
    arr = np.asarray([v - (1 << 64) if v >= 1 << 63 else v for v in ints], dtype=np.int64)
    return Feature("int64", arr)


_KIND_OF_FIELD = {1: "bytes", 2: "float", 3: "int64"}


def _decode_feature(c: _Cursor) -> Feature:
    feat = Feature("bytes", ())  # a Feature with no kind set parses as an empty list
    while c.more():
        num, wire = c.tag()
        if num in _KIND_OF_FIELD and wire == 2:
            feat = _decode_list(c.sub(), _KIND_OF_FIELD[num])
        else:
            c.skip(wire)
    return feat


def decode_example(data: bytes | memoryview) -> dict[str, Feature]:
    """The features of a serialised ``tf.train.Example``; raises :class:`ExampleDecodeError`."""
    out: dict[str, Feature] = {}
    for features in _Cursor(memoryview(data).cast("B")).messages(1):  # Example.features
        for entry in features.messages(1):  # Features.feature map entries
            key, feat = "", Feature("bytes", ())
            while entry.more():
                num, wire = entry.tag()
                if num == 1 and wire == 2:
                    try:
                        key = entry.bytes_().decode()
                    except UnicodeDecodeError as err:
                        raise ExampleDecodeError(f"feature key is not UTF-8 at byte {entry.pos}") from err
                elif num == 2 and wire == 2:
                    feat = _decode_feature(entry.sub())
                else:
                    entry.skip(wire)
            out[key] = feat  # map semantics: the last entry for a key wins
    return out
