"""TFRecord framing, tf.train.Example wire format and the RLDS writer/reader, without TensorFlow.

Known vectors: CRC-32C check value of "123456789" (RFC 3720), the masked CRCs of the
TFRecord spec, and hand-assembled protobuf bytes for a small Example. Round trips use
three synthetic metaworld_sawyer episodes (state 4, action 4, cameras high + wrist,
64x64) of different lengths. The check against real TFDS is scripts/check_rlds_tfds.sh.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.formats import detect_format, open_source
from curation.formats.crc32c import _raw_update, crc32c, masked_crc32c
from curation.formats.rlds import RLDSReader
from curation.formats.rlds_layout import DATASET_INFO, FEATURES_JSON, parse_features
from curation.formats.rlds_write import write_rlds
from curation.formats.tf_example import (
    ExampleDecodeError,
    Feature,
    bytes_feature,
    decode_example,
    encode_example,
    float_feature,
    int64_feature,
)
from curation.formats.tfrecord import TFRecordError, frame_record, iter_records, scan_records, write_records
from curation.frames import decode_frames
from schemas import Episode, FrameRef, episode_id_for
from schemas.errors import LoadError

# ---------------------------------------------------------------------------- crc32c


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xFF
    assert crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720 B.4: incrementing


def test_crc32c_vectorised_path_matches_table_loop():
    rng = np.random.default_rng(0)
    for n in (4095, 4096, 4097, 70_001, 1 << 18):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _raw_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n


def test_masked_crc_and_framing_layout():
    c = crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    framed = frame_record(b"abc")
    assert len(framed) == 8 + 4 + 3 + 4
    assert struct.unpack("<Q", framed[:8])[0] == 3
    assert struct.unpack("<I", framed[8:12])[0] == masked_crc32c(framed[:8])
    assert framed[12:15] == b"abc"
    assert struct.unpack("<I", framed[15:])[0] == masked_crc32c(b"abc")


# ---------------------------------------------------------------------------- Example


def test_example_bytes_match_hand_assembled_protobuf():
    # Example{features{feature{key:"a" value{int64_list{value:[1, 300]}}}}}
    int64_list = b"\x0a\x03" + b"\x01\xac\x02"  # packed field 1: varints 1, 300
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list  # Feature.int64_list = 3
    entry = b"\x0a\x01a" + b"\x12" + bytes([len(feature)]) + feature  # map entry key=1, value=2
    features = b"\x0a" + bytes([len(entry)]) + entry  # Features.feature = 1
    expected = b"\x0a" + bytes([len(features)]) + features  # Example.features = 1
    assert encode_example({"a": int64_feature([1, 300])}) == expected
    assert decode_example(expected)["a"] == int64_feature([1, 300])


def test_example_round_trip_all_kinds_and_unpacked_input():
    feats = {
        "steps/action": float_feature(np.linspace(-2, 2, 12)),
        "steps/is_first": int64_feature([1, 0, 0, -5, 2**40]),
        "steps/observation/image": bytes_feature([b"\x89PNG...", b"", b"x" * 300]),
        "empty": float_feature([]),
    }
    back = decode_example(encode_example(feats))
    assert set(back) == set(feats)
    for key, feat in feats.items():
        assert back[key] == feat, key
    assert back["steps/is_first"].value.dtype == np.int64
    assert back["steps/action"].value.dtype == np.float32
    # an unpacked float list (wire type 5 per value) must decode too
    unpacked = b"\x0d" + struct.pack("<f", 1.5) + b"\x0d" + struct.pack("<f", -2.0)
    feature = b"\x12" + bytes([len(unpacked)]) + unpacked
    entry = b"\x0a\x01f\x12" + bytes([len(feature)]) + feature
    msg = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    np.testing.assert_array_equal(decode_example(msg)["f"].value, [1.5, -2.0])


def test_example_decode_rejects_truncated_bytes():
    data = encode_example({"k": bytes_feature([b"hello world"])})
    with pytest.raises(ExampleDecodeError, match="past"):
        decode_example(data[:-3])


# ---------------------------------------------------------------------------- framing errors


def test_records_round_trip_and_corruption(tmp_path):
    path = tmp_path / "x.tfrecord"
    payloads = [b"first", b"", bytes(range(256)) * 40]
    offsets = write_records(path, payloads)
    assert list(iter_records(path)) == payloads
    assert [s.offset for s in scan_records(path)] == offsets

    data = bytearray(path.read_bytes())
    data[offsets[2] + 12 + 100] ^= 0x01  # flip a payload bit of record 2
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=r"x\.tfrecord: record 2 at byte \d+: data CRC mismatch"):
        list(iter_records(path))

    path.write_bytes(bytes(data[: offsets[2] + 20]))  # truncated inside record 2
    spans = list(scan_records(path))
    assert [s.error == "" for s in spans] == [True, True, False]
    assert "truncated" in spans[2].error and spans[2].offset == offsets[2]


# ---------------------------------------------------------------------------- RLDS round trip


def _episode(index: int, length: int) -> Episode:
    rng = np.random.default_rng(index)
    h_TH = np.linspace(0, 255, 64, dtype=np.float32)[None, :] + 7 * np.arange(length)[:, None]
    high_THWC = np.stack([h_TH % 256] * 3, -1)[:, :, None, :].repeat(64, axis=2).astype(np.uint8)
    wrist_THWC = rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8)
    return Episode(
        episode_id=episode_id_for("synthetic", "mem", index),
        source="synthetic",
        embodiment="metaworld_sawyer",
        instruction=f"push the puck to goal {index} — ünïcode",
        fps=29.97 if index == 1 else 80.0,
        state=rng.normal(size=(length, 4)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        timestamps=np.arange(length, dtype=np.float64) / (29.97 if index == 1 else 80.0),
        cameras={
            "high": FrameRef(kind="inline", array=high_THWC),
            "wrist": FrameRef(kind="inline", array=wrist_THWC),
        },
        source_path="mem",
        source_index=index,
    ).validate()


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [_episode(i, n) for i, n in enumerate((5, 9, 3))]


@pytest.fixture()
def dataset(tmp_path, episodes):
    return write_rlds(iter(episodes), tmp_path / "rlds", dataset_name="gwp_test", shards=2)


def test_layout_and_metadata(dataset, episodes):
    assert dataset.name == "1.0.0" and dataset.parent.name == "gwp_test"
    info = json.loads((dataset / DATASET_INFO).read_text())
    assert info["name"] == "gwp_test" and info["fileFormat"] == "tfrecord"
    split = info["splits"][0]
    assert split["name"] == "train" and sum(int(n) for n in split["shardLengths"]) == 3
    shards = sorted(p.name for p in dataset.glob("*.tfrecord*"))
    assert shards == ["gwp_test-train.tfrecord-00000-of-00002", "gwp_test-train.tfrecord-00001-of-00002"]
    assert int(split["numBytes"]) == sum((dataset / s).stat().st_size for s in shards)
    leaves = parse_features(json.loads((dataset / FEATURES_JSON).read_text()))
    assert leaves["steps/observation/image"].shape == (64, 64, 3)
    assert leaves["steps/observation/wrist_image"].encoding == "png"
    assert leaves["steps/action"].shape == (4,) and leaves["steps/action"].per_step
    assert leaves["steps/is_first"].dtype == "bool"
    assert not leaves["episode_metadata/fps"].per_step
    assert detect_format(dataset) == "rlds"
    assert not list(dataset.parent.glob(".*tmp*"))  # no leftover temporary folder


def test_round_trip_exact(dataset, episodes):
    reader = open_source(dataset)
    assert isinstance(reader, RLDSReader)
    refs = reader.list_episodes()
    assert [r.locator["record"] for r in refs] == [0, 1, 0]  # shards split 2 + 1 (rounded)
    assert len({r.path for r in refs}) == 2
    for ref, ep in zip(refs, episodes, strict=True):
        back = reader.load(ref)
        assert back.length == ep.length
        assert back.instruction == ep.instruction
        assert back.fps == ep.fps  # 29.97 survives the float32 metadata
        np.testing.assert_array_equal(back.state, ep.state)
        np.testing.assert_array_equal(back.action, ep.action)
        np.testing.assert_allclose(back.timestamps, ep.timestamps)
        assert set(back.cameras) == {"high", "wrist"}
        for role in ("high", "wrist"):
            assert back.cameras[role].kind == "encoded"
            assert back.cameras[role].encoded[0][:8] == b"\x89PNG\r\n\x1a\n"
            np.testing.assert_array_equal(decode_frames(back.cameras[role]), ep.cameras[role].array)
        assert back.episode_id == episode_id_for(
            reader.dataset_id, ref.locator["shard"], ref.locator["record"]
        )


def test_list_episodes_reads_only_headers(dataset, monkeypatch):
    reader = RLDSReader(dataset)
    import curation.formats.rlds as rlds

    def fail(*args, **kwargs):
        raise AssertionError("list_episodes must not decode records")

    monkeypatch.setattr(rlds, "decode_example", fail)
    monkeypatch.setattr(rlds, "read_record_at", fail)
    assert len(reader.list_episodes()) == 3


def test_jpeg_and_custom_camera_keys(tmp_path, episodes):
    root = write_rlds(episodes[:1], tmp_path, image_encoding="jpeg", camera_keys={"high": "image_0"})
    reader = RLDSReader(root)
    assert set(reader.mapping.cameras) == {"steps/observation/image_0", "steps/observation/wrist_image"}
    back = reader.load(reader.list_episodes()[0])
    assert back.cameras["high"].encoded[0][:2] == b"\xff\xd8"
    err = np.abs(decode_frames(back.cameras["high"]).astype(int) - episodes[0].cameras["high"].array).mean()
    assert err < 4.0  # lossy but close


def test_writer_refuses_overwrite_and_mixed_embodiments(tmp_path, episodes):
    write_rlds(episodes[:1], tmp_path)
    with pytest.raises(FileExistsError):
        write_rlds(episodes[:1], tmp_path)
    odd = episodes[1].with_(cameras={"high": episodes[1].cameras["high"]})
    with pytest.raises(ValueError, match="differ from the first episode"):
        write_rlds([episodes[0], odd], tmp_path / "b")
    assert not (tmp_path / "b" / "gwp_dataset" / "1.0.0").exists()


# ---------------------------------------------------------------------------- corruption


def _shard_and_refs(dataset):
    reader = RLDSReader(dataset)
    refs = reader.list_episodes()
    return reader, refs


def test_flipped_byte_spoils_one_record_only(dataset):
    reader, refs = _shard_and_refs(dataset)
    shard = refs[0].path
    data = bytearray(Path(shard).read_bytes())
    data[refs[0].locator["offset"] + 12 + 50] ^= 0xFF  # payload byte of record 0
    Path(shard).write_bytes(bytes(data))
    refs = reader.list_episodes()  # headers are intact: all 3 still listed
    assert len(refs) == 3
    with pytest.raises(LoadError) as info:
        reader.load(refs[0])
    assert info.value.reason == "corrupt_record"
    assert "gwp_test-train.tfrecord-00000-of-00002" in str(info.value) and "record 0" in str(info.value)
    assert "data CRC mismatch" in str(info.value)
    rej = info.value.to_rejection(source="gwp_test")
    assert rej.path == shard and rej.episode.endswith("#0")
    assert reader.load(refs[1]).length == 9  # the next record of the same shard still loads
    assert reader.load(refs[2]).length == 3


def test_truncated_shard_gives_error_ref_and_other_shards_load(dataset):
    reader, refs = _shard_and_refs(dataset)
    shard = refs[1].path
    data = Path(shard).read_bytes()
    Path(shard).write_bytes(data[: refs[1].locator["offset"] + 30])  # cut inside record 1
    refs = reader.list_episodes()
    assert len(refs) == 3
    assert reader.load(refs[0]).length == 5
    with pytest.raises(
        LoadError, match=r"tfrecord-00000-of-00002#1: corrupt_record: record 1 at byte \d+: truncated"
    ):
        reader.load(refs[1])
    assert reader.load(refs[2]).length == 3


def test_truncated_at_record_boundary_is_caught_by_shard_lengths(dataset):
    reader, refs = _shard_and_refs(dataset)
    shard = refs[1].path
    data = Path(shard).read_bytes()
    Path(shard).write_bytes(data[: refs[1].locator["offset"]])  # drop record 1 cleanly
    refs = reader.list_episodes()
    assert len(refs) == 3 and "error" in refs[1].locator
    with pytest.raises(LoadError, match=r"holds 1 records, dataset_info\.json says 2"):
        reader.load(refs[1])


def test_corrupt_header_loses_its_record_and_the_scan_resyncs(dataset):
    reader, refs = _shard_and_refs(dataset)
    shard = refs[0].path
    data = bytearray(Path(shard).read_bytes())
    data[2] ^= 0x10  # the length of record 0
    Path(shard).write_bytes(bytes(data))
    refs = reader.list_episodes()
    assert [("error" in r.locator) for r in refs] == [True, False, False]
    with pytest.raises(LoadError, match="length CRC mismatch"):
        reader.load(refs[0])
    assert reader.load(refs[1]).length == 9  # record 1 of the same shard, found again
    assert reader.load(refs[2]).length == 3


def test_bad_metadata_is_named(dataset):
    (dataset / DATASET_INFO).write_text("{not json")
    with pytest.raises(LoadError, match=r"dataset_info\.json: bad_metadata"):
        RLDSReader(dataset).list_episodes()


def test_wrong_action_width_is_a_load_error(tmp_path, episodes):
    root = write_rlds(episodes[:1], tmp_path)
    shard = next(root.glob("*.tfrecord*"))
    ex = decode_example(next(iter_records(shard)))
    ex["steps/action"] = Feature("float", np.zeros(5 * 3, np.float32))  # 3 dims per step
    write_records(shard, [encode_example(ex)])
    (root / FEATURES_JSON).unlink()  # fall back to the embodiment's dims
    reader = RLDSReader(root)
    with pytest.raises(LoadError) as info:
        reader.load(reader.list_episodes()[0])
    assert info.value.reason in ("bad_shape", "length_mismatch")


def test_no_tensorflow_imported():
    assert "tensorflow" not in sys.modules
