"""Streaming training data (``pretrain.stream``): row groups over fsspec, a bounded disk cache, exact resume.

The dataset is curated here from simulated episodes and rewritten as three shards of small row
groups (so that a batch draws from several row groups and the cache can be smaller than the data).
The same folder is read three ways: locally, as a ``file://`` URL, and as a dataset repo on the
local Hub server; every way must give the same batches, in the same order, on every rank.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.in_memory import curate_in_memory
from curation.shards import file_sha256
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.stream import RemoteShard, RowGroupCache, StreamConfig, hub_url, read_shard_columns
from tests.support.helpers import make_episodes

pytest_plugins = ["tests.support.hub_fixture"]

LENGTHS = (24, 30, 20)
ROW_GROUP = 4


def reshard(src: Path, out: Path, shards: int = 3, row_group: int = ROW_GROUP) -> Path:
    """``src`` (a curated folder) rewritten as ``shards`` shards of ``row_group``-row groups."""
    manifest = json.loads((src / "meta/manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(src / s["name"]) for s in manifest["shards"]])
    (out / "data").mkdir(parents=True)
    (out / "meta").mkdir()
    cuts = np.linspace(0, table.num_rows, shards + 1).astype(int)
    infos = []
    for i in range(shards):
        name = f"data/shard-{i:05d}.parquet"
        part = table.slice(cuts[i], cuts[i + 1] - cuts[i])
        pq.write_table(part, out / name, row_group_size=row_group)
        infos.append({**manifest["shards"][0], "name": name, "rows": part.num_rows,
                      "sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size})  # fmt: skip
    manifest["shards"] = infos
    (out / "meta/manifest.json").write_text(json.dumps(manifest))
    if manifest.get("text"):  # the instructions' token states travel beside the shards
        (out / manifest["text"]["file"]).write_bytes((src / manifest["text"]["file"]).read_bytes())
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    curated = curate_in_memory(make_episodes(LENGTHS, size=64), root / "curated")
    return reshard(curated, root / "shards")


def batches(loader: ShardLoader, n: int) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["sample_id"] == y["sample_id"]
        for k in ("obs_frames", "future_frames", "action", "state", "text_states", "text_mask"):
            assert torch.equal(x[k], y[k]), k


def test_file_url_streams_the_same_batches_with_a_bounded_cache(dataset, tmp_path):
    local = ShardSet.open(dataset)
    shard_bytes = sum(p.stat().st_size for p in local.shards)
    cache_mb = shard_bytes / 4 / 2**20  # a quarter of the dataset
    cfg = StreamConfig(cache_mb=cache_mb, cache_dir=str(tmp_path / "cache"))
    streamed = ShardSet.open(f"file://{dataset}", stream=cfg)
    assert streamed.rows == local.rows and all(isinstance(s, RemoteShard) for s in streamed.shards)
    assert streamed.stream.num_groups(0) == -(-local.rows[0] // ROW_GROUP)
    lc = LoaderConfig(batch_size=4, seed=3, shuffle_shards=2)
    for rank in (0, 1):  # two data-parallel ranks, two epochs and a bit
        ref = ShardLoader(local, lc, rank=rank, world_size=2)
        got = ShardLoader(streamed, lc, rank=rank, world_size=2)
        n = 2 * ref.batches_per_epoch + 1
        assert_same_batches(batches(got, n), batches(ref, n))
    cache = streamed.stream.cache()
    files = list((tmp_path / "cache").rglob("*.arrow"))
    assert cache.bytes == sum(f.stat().st_size for f in files) <= cfg.cache_mb * 2**20
    groups = sum(streamed.stream.num_groups(i) for i in range(3))
    assert len(files) < groups < cache.fetches  # evicted, so some row groups were fetched again


def test_streamed_position_resumes_exactly_and_names_the_row_group(dataset, tmp_path):
    cfg = StreamConfig(cache_mb=0.05, cache_dir=str(tmp_path / "cache"))
    lc = LoaderConfig(batch_size=3, seed=1)
    full = batches(ShardLoader(ShardSet.open(f"file://{dataset}", stream=cfg), lc), 12)
    first = ShardLoader(ShardSet.open(f"file://{dataset}", stream=cfg), lc)
    head = batches(first, 7)
    state = first.state_dict()
    shards = ShardSet.open(f"file://{dataset}", stream=cfg)
    group, in_group = shards.stream.locate(state["shard_index"], state["row_offset"])
    assert (state["row_group"], state["row_in_group"]) == (group, in_group)
    assert state["row_offset"] == group * ROW_GROUP + in_group
    second = ShardLoader(shards, lc)  # a fresh process: cache adopted from disk, order from the seed
    second.load_state_dict(state)
    assert_same_batches(head + batches(second, 5), full)
    local = ShardLoader(dataset, lc)  # a local loader takes a streamed run's state and vice versa
    local.load_state_dict(state)
    assert_same_batches(batches(local, 5), full[7:])


def test_row_group_cache_is_lru_bounded_and_adopts_a_previous_runs_files(tmp_path):
    t = pa.table({"x": np.arange(1000, dtype=np.int64)})
    cache = RowGroupCache(tmp_path / "c", max_bytes=10**9)
    cache.get("a", lambda: t)
    size = cache.bytes
    cache = RowGroupCache(tmp_path / "c", max_bytes=int(2.5 * size))  # adopts "a"
    assert cache.get("a", lambda: pytest.fail("a is cached on disk")).equals(t)
    cache.get("b", lambda: t)
    cache.get("a", lambda: t)  # a is now the most recent
    cache.get("c", lambda: t)  # evicts b
    assert sorted(p.stem for p in (tmp_path / "c").glob("*.arrow")) == ["a", "c"] and cache.fetches == 2
    tiny = RowGroupCache(tmp_path / "d", max_bytes=1)  # one table bigger than the bound is still served
    assert tiny.get("x", lambda: t).equals(t) and tiny.get("y", lambda: t).equals(t)
    assert [p.stem for p in (tmp_path / "d").glob("*.arrow")] == ["y"]


def test_hub_repo_streams_by_range_requests(dataset, hub_env, tmp_path):
    from huggingface_hub import HfApi

    repo = hub_env.new_repo_id("stream")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=str(dataset), repo_id=repo, repo_type="dataset")
    cfg = StreamConfig(cache_mb=1.0, cache_dir=str(tmp_path / "cache"))
    shards = ShardSet.open(repo, stream=cfg)
    assert str(shards.shards[0]).startswith(hub_url(repo, None))
    lc = LoaderConfig(batch_size=4, seed=5)
    got = ShardLoader(shards, lc)
    first = batches(got, 1)
    groups = sum(shards.stream.num_groups(i) for i in range(3))
    assert shards.stream.cache().fetches < groups  # training started before the dataset arrived
    assert_same_batches(first + batches(got, 3), batches(ShardLoader(dataset, lc), 4))
    # this repo's requests only: the Hub server is shared by the session's tests
    gets = hub_env.server.requests_matching(rf"^GET .*/{re.escape(repo)}/resolve/.*\.parquet")
    assert gets and all(status == 206 for _, _, status in gets), gets  # byte ranges, never whole files
    col = read_shard_columns(shards.shards[1], ["episode_id"])
    assert col.equals(pq.read_table(dataset / "data/shard-00001.parquet", columns=["episode_id"]))
    assert not any((Path(hub_env.home) / "hub").rglob("*.parquet"))  # nothing landed in the Hub cache
    sha = api.dataset_info(repo).sha
    pinned = ShardSet.open(repo, revision=sha, stream=cfg)
    assert pinned.rows == shards.rows and f"@{sha}/" in str(pinned.shards[0])
    with pytest.raises((FileNotFoundError, RuntimeError), match="no-such-branch") as err:
        ShardSet.open(repo, revision="no-such-branch", stream=cfg)
    assert "no such repo, revision or folder" in str(err.value)


def test_streaming_errors_name_the_file(dataset, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta").mkdir()
    with pytest.raises(FileNotFoundError, match=r"meta/manifest\.json: no manifest"):
        ShardSet.open(f"file://{bad}")
    manifest = json.loads((dataset / "meta/manifest.json").read_text())
    (bad / "meta/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match=r"shard-00000\.parquet: listed in the manifest but missing"):
        ShardSet.open(f"file://{bad}")
    with pytest.raises(ValueError, match="cache_mb"):
        ShardSet.open(f"file://{dataset}", stream=StreamConfig(cache_mb=0))


def test_cli_mistakes_about_streaming_are_one_line_and_exit_2(dataset, tmp_path, capsys):
    from pipelines import finetune

    base = ["--preset", "debug", "--init", "none", "--out", str(tmp_path / "o"), "--no-progress"]
    cases = {
        "--data-revision applies to a Hub repo id": ["--data", f"file://{dataset}", "--data-revision", "v1"],
        "cache_mb must be > 0": ["--data", f"file://{dataset}", "--stream-cache-mb", "0"],
        "cannot open this URL": ["--data", "nosuchprotocol://bucket/set"],
        "shard-00000.parquet: listed in the manifest but missing": ["--data", f"file://{tmp_path / 'half'}"],
    }
    (tmp_path / "half" / "meta").mkdir(parents=True)
    (tmp_path / "half" / "meta/manifest.json").write_text((dataset / "meta/manifest.json").read_text())
    for message, argv in cases.items():
        assert finetune.main(base + argv) == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("gwp finetune: error:") and message in err, err


def test_dataloader_workers_stream_the_same_batches_each_with_its_cache_share(dataset, tmp_path):
    cfg = StreamConfig(cache_mb=0.2, cache_dir=str(tmp_path / "cache"))
    lc = LoaderConfig(batch_size=4, seed=4)
    want = batches(ShardLoader(dataset, lc), 6)
    got = batches(ShardLoader(ShardSet.open(f"file://{dataset}", stream=cfg), replace(lc, num_workers=2)), 6)
    assert_same_batches(got, want)
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert folders == ["rank00000-worker000", "rank00000-worker001"]
    for f in (tmp_path / "cache").iterdir():
        assert sum(p.stat().st_size for p in f.glob("*.arrow")) <= cfg.cache_mb * 2**20 / 2


def test_cached_row_groups_of_an_older_version_are_not_served(dataset, tmp_path):
    from pretrain.stream import RowGroupSource

    cfg = StreamConfig(cache_mb=10, cache_dir=str(tmp_path / "cache"))
    shards = ShardSet.open(f"file://{dataset}", stream=cfg)
    assert shards.shards[0].sha256 == file_sha256(dataset / "data/shard-00000.parquet")
    groups = [[ROW_GROUP] * shards.stream.num_groups(i) for i in range(3)]  # layout as the footers say
    same = RowGroupSource(shards.shards, groups, cfg)
    same.row_group(0, 0, ["sample_id"])
    same.row_group(0, 0, ["sample_id"])
    newer = [replace(s, sha256="0" * 64) for s in shards.shards]  # the repo moved on: new content
    other = RowGroupSource(newer, groups, cfg)
    other.row_group(0, 0, ["sample_id"])
    assert (same.cache().fetches, other.cache().fetches) == (1, 1)
