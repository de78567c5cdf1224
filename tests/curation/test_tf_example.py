"""``tf.train.Example`` decoding skips what it does not know, at every level, as protobuf readers must."""

from __future__ import annotations

import numpy as np
import pytest

from curation.formats.tf_example import ExampleDecodeError, decode_example


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field with a one-byte tag and length (enough for these small messages)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def int64_feature(value: int) -> bytes:
    return field(3, field(1, bytes([value])))  # Feature.int64_list, packed


def test_unknown_fields_are_skipped_and_the_last_entry_of_a_key_wins():
    features = (
        field(1, field(1, b"a") + field(2, int64_feature(7)))
        + bytes([2 << 3 | 0, 1])  # an unknown varint field among the map entries
        + field(1, field(1, b"a") + field(2, int64_feature(9)))  # the same key again: this one counts
        + field(1, field(1, b"b") + bytes([5 << 3 | 5, 0, 0, 0, 0]) + field(2, field(1, field(1, b"x"))))
    )
    example = bytes([5 << 3 | 0, 7]) + field(1, features) + field(3, b"zz")  # unknown fields around it
    out = decode_example(example)
    assert sorted(out) == ["a", "b"]
    assert out["a"].kind == "int64" and np.array_equal(out["a"].value, [9])
    assert out["b"].kind == "bytes" and out["b"].value == (b"x",)


def test_a_map_entry_running_past_its_message_is_an_error():
    features = field(1, field(1, b"a"))[:-1]  # the entry's declared length now overruns Features
    with pytest.raises(ExampleDecodeError, match="runs past"):
        decode_example(field(1, features))
