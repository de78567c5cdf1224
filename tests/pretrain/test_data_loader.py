"""Shard loader: content, deterministic shuffling, rank sharding, exact resume, workers, Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from pretrain.codec import LatentCache, PixelPatchCodec
from pretrain.data import (
    MANIFEST_FILE,
    LoaderConfig,
    ShardLoader,
    ShardSet,
    decode_row_frames,
    resolve_dataset,
)
from schemas import DimStats, EmbodimentStats, Manifest, Sample, SchemaVersionError, ShardInfo
from schemas.text import HashedTokenEncoder, TextEncoderConfig
from schemas.text_store import TextStore
from tests.support.samples import tall_png, window_sample

H, W, K, P = 8, 8, 2, 3
SHARD_ROWS = (5, 4, 3)

TEXT = HashedTokenEncoder(TextEncoderConfig(dim=8))


def frames_for(i: int) -> np.ndarray:
    """Deterministic uint8 [1+K, H, W, 3] frames of row i."""
    rng = np.random.default_rng(1000 + i)
    return rng.integers(0, 256, (1 + K, H, W, 3), dtype=np.uint8)


def make_row(i: int, fmt: str = "png") -> Sample:
    frames = frames_for(i)
    if fmt == "latent":
        lat = PixelPatchCodec(4).encode(
            torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        )[0]
        video, latent_shape = lat.numpy().astype("<f4").tobytes(), tuple(lat.shape)
    else:
        video, latent_shape = tall_png(frames), ()
    return window_sample(
        f"ep{i // 4}",
        (i % 4) * 10,
        action_Pd=i + np.arange(P * 4, dtype=np.float32).reshape(P, 4) / 100,
        state_d=np.full(4, i / 10),
        num_future=K,
        stride=2,
        embodiment_id=i % 2,
        instruction=f"task {i}",
        video=video,
        video_format=fmt,
        height=H,
        width=W,
        latent_shape=latent_shape,
    )


def write_dataset(root: Path, shard_rows=SHARD_ROWS, fmt: str = "png") -> dict[str, int]:
    """Shards + manifest; returns sample_id -> row number."""
    (root / "data").mkdir(parents=True)
    (root / "meta").mkdir()
    ids, infos, i, instructions = {}, [], 0, []
    for s, n in enumerate(shard_rows):
        rows = [make_row(i + j, fmt) for j in range(n)]
        for j, r in enumerate(rows):
            ids[r.sample_id] = i + j
            instructions.append(r.instruction)
        i += n
        name = f"data/shard-{s:05d}.parquet"
        pq.write_table(schemas.to_table(rows), root / name)
        infos.append(ShardInfo(name, n, "0" * 64))
    st = DimStats(*(((0.0,) * 4,) * 6), count=i)
    total = sum(shard_rows)
    manifest = Manifest(
        code_version="test",
        config={},
        counts={"episodes_in": 1, "episodes_with_samples": 1, "episodes_rejected": 0, "samples": total},
        stats={"metaworld_sawyer": EmbodimentStats("metaworld_sawyer", st, st)},
        sources=(),
        shards=tuple(infos),
        rejections=(),
        text=TextStore.encode(instructions, TEXT).write(root),
    )
    (root / MANIFEST_FILE).write_text(manifest.validate().to_json())
    return ids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("ds")
    return root, write_dataset(root)


def take(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def ids_of(batches) -> list[list[str]]:
    return [b["sample_id"] for b in batches]


def test_batch_content(dataset):
    root, ids = dataset
    loader = ShardLoader(root, LoaderConfig(batch_size=4, seed=1), epochs=1)
    batch = next(iter(loader))
    assert batch["obs_frames"].shape == (4, 3, H, W) and batch["future_frames"].shape == (4, 3, K, H, W)
    assert batch["action"].shape == (4, P, 32) and batch["action_mask"].shape == (4, 32)
    assert batch["state"].shape == (4, 32) and batch["embodiment_id"].dtype == torch.long
    for j, sid in enumerate(batch["sample_id"]):
        i = ids[sid]
        want = torch.from_numpy(frames_for(i)).permute(3, 0, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(batch["obs_frames"][j], want[:, 0])
        torch.testing.assert_close(batch["future_frames"][j], want[:, 1:])
        torch.testing.assert_close(batch["action"][j], torch.from_numpy(make_row(i).action))
        assert batch["instruction"][j] == f"task {i}"
        assert batch["embodiment_id"][j] == i % 2
        states, mask = TEXT.encode([f"task {i}"])  # ["task", str(i), "</s>"]
        n = int(mask.sum())
        assert int(batch["text_mask"][j].sum()) == n == 3
        torch.testing.assert_close(batch["text_states"][j, :n], torch.from_numpy(states[0, :n]))
    assert batch["obs_frames"].min() >= -1 and batch["obs_frames"].max() <= 1


def test_epoch_covers_every_row_once_and_order_is_seeded(dataset):
    root, ids = dataset
    cfg = LoaderConfig(batch_size=5, seed=3, drop_last=False)
    run = [s for b in ShardLoader(root, cfg, epochs=2) for s in b["sample_id"]]
    e0, e1 = run[:12], run[12:]
    assert sorted(e0) == sorted(ids) and sorted(e1) == sorted(ids)
    assert e0 != e1  # a new epoch reshuffles
    again = [s for b in ShardLoader(root, cfg, epochs=2) for s in b["sample_id"]]
    assert again == run
    other = [
        s
        for b in ShardLoader(root, LoaderConfig(batch_size=5, seed=4, drop_last=False), epochs=1)
        for s in b["sample_id"]
    ]
    assert other != e0
    plain = [
        s
        for b in ShardLoader(root, LoaderConfig(batch_size=5, shuffle=False, drop_last=False), epochs=1)
        for s in b["sample_id"]
    ]
    assert [ids[s] for s in plain] == list(range(12))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_each_epoch(dataset, world):
    root, ids = dataset
    cfg = LoaderConfig(batch_size=2, seed=7, drop_last=False)
    per_epoch: list[list[str]] = [[], []]
    for r in range(world):
        loader = ShardLoader(root, cfg, rank=r, world_size=world, epochs=2)
        batches = ids_of(loader)
        n = loader.batches_per_epoch
        assert len(batches) == 2 * n
        for epoch in range(2):
            per_epoch[epoch] += [s for b in batches[epoch * n : (epoch + 1) * n] for s in b]
    for epoch in range(2):
        assert sorted(per_epoch[epoch]) == sorted(ids), f"epoch {epoch}"  # each row exactly once


def test_drop_last_gives_equal_full_batches(dataset):
    root, _ = dataset
    cfg = LoaderConfig(batch_size=2, seed=0, drop_last=True)
    runs = [
        [b["sample_id"] for b in ShardLoader(root, cfg, rank=r, world_size=2, epochs=1)] for r in range(2)
    ]
    assert len(runs[0]) == len(runs[1]) == 3  # 12 rows // (2 ranks * 2)
    flat = [s for run in runs for b in run for s in b]
    assert all(len(b) == 2 for run in runs for b in run) and len(set(flat)) == len(flat) == 12


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(dataset, workers):
    root, _ = dataset
    cfg = LoaderConfig(batch_size=5, seed=11, drop_last=False, num_workers=workers, shuffle_shards=1)
    reference = ids_of(
        take(ShardLoader(root, LoaderConfig(batch_size=5, seed=11, drop_last=False, shuffle_shards=1)), 8)
    )
    first = ShardLoader(root, cfg)
    got = ids_of(take(first, 4))  # 3 batches per epoch: stops inside epoch 1
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 1 and state["shard_index"] >= 0
    resumed = ShardLoader(root, cfg)
    resumed.load_state_dict(state)
    got += ids_of(take(resumed, 4))
    assert got == reference


def test_resume_rejects_other_order(dataset):
    root, _ = dataset
    state = ShardLoader(root, LoaderConfig(batch_size=2, seed=1)).state_dict()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        ShardLoader(root, LoaderConfig(batch_size=2, seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        ShardLoader(root, LoaderConfig(batch_size=2, seed=1), rank=1, world_size=2).load_state_dict(state)


def test_manifest_schema_version_mismatch_names_the_file(tmp_path):
    write_dataset(tmp_path, (2,))
    mpath = tmp_path / MANIFEST_FILE
    data = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**data, "schema_version": "9.0"}))
    with pytest.raises(SchemaVersionError, match=r"manifest\.json.*'9\.0'"):
        ShardSet.open(tmp_path)


def test_shard_schema_version_mismatch_names_the_file(tmp_path):
    write_dataset(tmp_path, (2, 2))
    path = tmp_path / "data" / "shard-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"gwp_schema_version": "7.1"}), path)
    with pytest.raises(SchemaVersionError, match=r"shard-00001\.parquet.*'7\.1'"):
        ShardSet.open(tmp_path)


def test_missing_manifest_and_row_count_mismatch(tmp_path):
    write_dataset(tmp_path, (2,))
    mpath = tmp_path / MANIFEST_FILE
    data = json.loads(mpath.read_text())
    data["shards"][0]["rows"] = 5
    data["counts"]["samples"] = 5
    mpath.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"shard-00000\.parquet: has 2 rows"):
        ShardSet.open(tmp_path)
    mpath.unlink()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ShardSet.open(tmp_path)


def test_hub_repo_id_is_downloaded_at_revision(dataset, tmp_path, monkeypatch):
    import huggingface_hub

    root, ids = dataset
    calls = []

    def fake_snapshot_download(**kw):
        calls.append(kw)
        dst = tmp_path / "snap"
        shutil.copytree(root, dst)
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loader = ShardLoader("someone/robot-shards", LoaderConfig(batch_size=4), revision="v1.0", epochs=1)
    assert sorted(s for b in loader for s in b["sample_id"]) == sorted(ids)
    (call,) = calls
    assert call["repo_id"] == "someone/robot-shards" and call["repo_type"] == "dataset"
    assert call["revision"] == "v1.0" and "data/*.parquet" in call["allow_patterns"]


def test_hub_offline_failure_is_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"'nobody/none'.*not a local folder.*Hub dataset repo"):
        resolve_dataset("nobody/none", revision="main", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        resolve_dataset("./does/not/exist")


def test_latents_from_cache_and_from_stored_latent_rows(dataset, tmp_path):
    root, _ = dataset
    codec = PixelPatchCodec(4)
    cfg = LoaderConfig(batch_size=4, seed=5)
    frames = next(iter(ShardLoader(root, cfg)))
    cached = next(iter(ShardLoader(root, cfg, latent_cache=LatentCache(tmp_path / "cache", codec))))
    assert cached["sample_id"] == frames["sample_id"] and "obs_frames" not in cached
    x = torch.cat([frames["obs_frames"][:, :, None], frames["future_frames"]], 2)
    want = codec.encode(x)
    assert cached["obs_latents"].shape == (4, 48, 1, H // 4, W // 4)
    torch.testing.assert_close(torch.cat([cached["obs_latents"], cached["future_latents"]], 2), want)

    lat_root = tmp_path / "latent_ds"
    write_dataset(lat_root, (4,), fmt="latent")
    stored = next(iter(ShardLoader(lat_root, LoaderConfig(batch_size=4, shuffle=False))))
    ref = ShardLoader(root, LoaderConfig(batch_size=4, shuffle=False))
    x = next(iter(ref))
    want = codec.encode(torch.cat([x["obs_frames"][:, :, None], x["future_frames"]], 2))
    torch.testing.assert_close(torch.cat([stored["obs_latents"], stored["future_latents"]], 2), want)


def test_frame_decode_checks_the_row():
    frames = frames_for(0)
    np.testing.assert_array_equal(decode_row_frames(tall_png(frames), "png", 1 + K, H, W), frames)
    with pytest.raises(ValueError, match=r"expected \(2, 8, 8, 3\)"):
        decode_row_frames(tall_png(frames), "png", 2, H, W)
    with pytest.raises(ValueError, match="PNG"):
        decode_row_frames(b"not a png", "png", 1, H, W)
