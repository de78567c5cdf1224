"""The local Hub server against the real huggingface_hub / datasets clients (no mocks of either).

Covers: repo create (409 / exist_ok), folder upload through preupload + LFS + ndjson commit, download by
file and by snapshot in fresh caches, no-op re-upload, pinned revisions, branches, Range reads,
``Dataset.push_to_hub`` / ``load_dataset`` including a hand-made parquet folder with a YAML ``configs``
card, reliability under injected faults, and the error mapping (auth, unknown repo/revision/file).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

if TYPE_CHECKING:
    from tests.support.hub_fixture import HubEnv

pytest_plugins = ["tests.support.hub_fixture"]  # the `hub_server` / `hub_env` fixtures


def _model_folder(root: Path, seed: int = 0) -> dict[str, bytes]:
    """A tiny model folder: binary weights (LFS), a config and a nested text file (regular)."""
    rng = np.random.default_rng(seed)
    files = {
        "model.safetensors": rng.integers(0, 256, size=50_000, dtype=np.uint8).tobytes(),
        "config.json": json.dumps({"hidden": 8, "seed": seed}).encode(),
        "stats/norm.json": json.dumps({"mean": [0.0, 1.0]}).encode(),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_create_repo_conflict_and_exist_ok(hub_env: HubEnv) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    url = api.create_repo(repo_id)
    assert url == f"{hub_env.endpoint}/{repo_id}"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True) == url
    ds_url = api.create_repo(repo_id, repo_type="dataset")  # same name, other type: a different repo
    assert ds_url == f"{hub_env.endpoint}/datasets/{repo_id}"
    assert api.repo_info(repo_id).sha != api.repo_info(repo_id, repo_type="dataset").sha


def test_upload_folder_then_download_identical(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    local = _model_folder(tmp_path / "model")
    info = api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id, commit_message="weights v1")

    # The binary went through LFS (batch + PUT), the text files inline in the commit.
    assert hub_env.server.requests_matching(rf"^PUT /_lfs/model/{repo_id}/")
    siblings = {s.rfilename: s for s in api.model_info(repo_id, files_metadata=True).siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(local["model.safetensors"]).hexdigest()
    assert siblings["config.json"].lfs is None
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True)}
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(local["config.json"]) + local["config.json"]).hexdigest()
    assert tree["config.json"].blob_id == git_sha1
    assert set(tree) == {"model.safetensors", "config.json", "stats", "stats/norm.json"}
    assert api.list_repo_commits(repo_id)[0].title == "weights v1"

    for rel, data in local.items():
        assert Path(hf_hub_download(repo_id, rel)).read_bytes() == data
    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "fresh_cache"))
    assert snapshot.name == info.oid
    assert _read_tree(snapshot) == local


def test_reupload_unchanged_is_noop_and_revisions_pin(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    folder = tmp_path / "model"
    v1 = _model_folder(folder)
    first = api.upload_folder(folder_path=folder, repo_id=repo_id)
    commits_before = len(hub_env.server.history(repo_id))

    again = api.upload_folder(folder_path=folder, repo_id=repo_id)  # the client drops unchanged files
    assert again.oid == first.oid
    assert len(hub_env.server.history(repo_id)) == commits_before

    (folder / "config.json").write_bytes(b'{"hidden": 16}')
    second = api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert second.oid != first.oid
    assert hub_env.server.history(repo_id)[:2] == [second.oid, first.oid]
    old = hf_hub_download(repo_id, "config.json", revision=first.oid)
    new = hf_hub_download(repo_id, "config.json", revision=second.oid)
    assert Path(old).read_bytes() == v1["config.json"]
    assert Path(new).read_bytes() == b'{"hidden": 16}'
    assert Path(hf_hub_download(repo_id, "config.json")).read_bytes() == b'{"hidden": 16}'

    # A branch moves independently of main.
    api.create_branch(repo_id, branch="exp", revision=first.oid)
    api.upload_file(path_or_fileobj=b"branch only", path_in_repo="notes.txt", repo_id=repo_id, revision="exp")
    assert Path(hf_hub_download(repo_id, "notes.txt", revision="exp")).read_bytes() == b"branch only"
    assert "notes.txt" not in api.list_repo_files(repo_id)
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main", "exp"}


def test_multi_round_commits_for_large_folders(hub_env: HubEnv, tmp_path: Path) -> None:
    """huggingface_hub 2.4 has no `upload_large_folder` (with Xet off `upload_folder` is one commit): callers
    batch `preupload_lfs_files` + `create_commit` themselves, chaining `parent_commit`."""
    api = HfApi()
    repo_id = hub_env.new_repo_id("dataset")
    api.create_repo(repo_id, repo_type="dataset")
    rng = np.random.default_rng(7)
    local = {
        f"shards/chunk-{i:03d}.bin": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for i in range(12)
    }
    local.update({f"meta/ep-{i:03d}.json": json.dumps({"ep": i}).encode() for i in range(12)})
    paths = sorted(local)
    parent = api.repo_info(repo_id, repo_type="dataset").sha
    for start in range(0, len(paths), 10):
        ops = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=local[p]) for p in paths[start : start + 10]
        ]
        api.preupload_lfs_files(repo_id, additions=ops, repo_type="dataset")
        parent = api.create_commit(
            repo_id, ops, commit_message=f"part {start}", repo_type="dataset", parent_commit=parent
        ).oid
    assert len(hub_env.server.history(repo_id, "dataset")) == 1 + 3
    assert hub_env.server.files_at(repo_id, "dataset") == local

    stale = hub_env.server.history(repo_id, "dataset")[1]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")],
            commit_message="racing",
            repo_type="dataset",
            parent_commit=stale,
        )
    assert err.value.response.status_code == 412


def test_range_reads(hub_env: HubEnv) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    data = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id=repo_id)

    with HfFileSystem().open(f"{repo_id}/blob.bin", "rb", block_size=512) as f:
        f.seek(5000)
        assert f.read(300) == data[5000:5300]
    statuses = {s for _, _, s in hub_env.server.requests_matching(rf"^GET /{repo_id}/resolve/.*/blob\.bin$")}
    assert statuses == {206}  # the filesystem fetched blocks, never the whole file

    url = f"{hub_env.endpoint}/{repo_id}/resolve/main/blob.bin"
    part = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert httpx2.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert httpx2.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    head = httpx2.head(url)
    assert head.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(data).hexdigest()
    assert head.headers["X-Linked-Size"] == str(len(data))
    assert head.headers["X-Repo-Commit"] == api.repo_info(repo_id).sha


def test_push_to_hub_then_load_dataset(hub_env: HubEnv) -> None:
    import datasets

    repo_id = hub_env.new_repo_id("dataset")
    rows = {
        "idx": list(range(57)),
        "text": [f"row {i}" for i in range(57)],
        "score": [i / 7 for i in range(57)],
    }
    datasets.Dataset.from_dict(rows).push_to_hub(repo_id, max_shard_size="1KB")
    assert (
        len([f for f in HfApi().list_repo_files(repo_id, repo_type="dataset") if f.endswith(".parquet")]) > 1
    )

    # A second push adds a split: the client reads back and rewrites the card in the same repo.
    extra = {"idx": [1000, 1001], "text": ["a", "b"], "score": [0.5, 1.5]}
    datasets.Dataset.from_dict(extra).push_to_hub(repo_id, split="test")

    loaded = datasets.load_dataset(repo_id)
    assert loaded["test"]["idx"] == [1000, 1001]
    streamed = datasets.load_dataset(repo_id, split="train", streaming=True)
    assert sorted(r["idx"] for r in streamed) == rows["idx"]
    assert sorted(loaded["train"].to_dict()["idx"]) == rows["idx"]
    by_idx = {r["idx"]: r for r in loaded["train"]}
    assert all(
        by_idx[i]["text"] == rows["text"][i] and by_idx[i]["score"] == rows["score"][i] for i in range(57)
    )


def test_parquet_folder_with_configs_card_loads(hub_env: HubEnv, tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "export"
    (folder / "data").mkdir(parents=True)
    (folder / "meta").mkdir()
    for shard in range(3):
        ids = list(range(shard * 10, shard * 10 + 10))
        pq.write_table(
            pa.table({"id": ids, "split_tag": ["train"] * 10}), folder / f"data/train-{shard:05d}.parquet"
        )
    pq.write_table(
        pa.table({"id": [100, 101], "split_tag": ["val"] * 2}), folder / "data/validation-00000.parquet"
    )
    pq.write_table(pa.table({"episode": ["a", "b", "c"]}), folder / "meta/episodes.parquet")
    (folder / "README.md").write_text(
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: data/train-*.parquet\n"
        "  - split: validation\n"
        "    path: data/validation-*.parquet\n"
        "- config_name: episodes\n"
        "  data_files: meta/episodes.parquet\n"
        "---\n\n# Test export\n"
    )
    api = HfApi()
    repo_id = hub_env.new_repo_id("dataset")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")

    loaded = datasets.load_dataset(repo_id)
    assert sorted(loaded["train"]["id"]) == list(range(30))
    assert sorted(loaded["validation"]["id"]) == [100, 101]
    assert datasets.load_dataset(repo_id, "episodes", split="train")["episode"] == ["a", "b", "c"]


def test_dropped_lfs_upload_is_retried_by_client(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    local = _model_folder(tmp_path / "model", seed=3)
    hub_env.server.drop_lfs_uploads(1)
    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)

    statuses = [s for _, _, s in hub_env.server.requests_matching(rf"^PUT /_lfs/model/{repo_id}/")]
    assert statuses == [-1, 200]  # cut half-way, then re-sent whole by the client's backoff
    assert hub_env.server.pending_faults() == 0
    assert hub_env.server.files_at(repo_id) == local


def test_failed_commit_then_rerun_completes(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    local = _model_folder(tmp_path / "model", seed=4)
    hub_env.server.fail_requests(rf"^POST /{repo_id}\.git/info/lfs/", 500, times=1)  # retried
    hub_env.server.fail_requests(rf"^POST /api/models/{repo_id}/commit/", 503, times=1)  # not retried
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)
    assert err.value.response.status_code == 503
    batch_statuses = [s for _, _, s in hub_env.server.requests_matching(rf"^POST /{repo_id}\.git/info/lfs/")]
    assert batch_statuses == [500, 200]
    assert hub_env.server.files_at(repo_id) == {}  # nothing half-committed

    api.upload_folder(folder_path=tmp_path / "model", repo_id=repo_id)  # re-run: LFS object already stored
    assert len(hub_env.server.requests_matching(rf"^PUT /_lfs/model/{repo_id}/")) == 1
    assert hub_env.server.files_at(repo_id) == local


def test_control_api_and_subprocess_client(hub_env: HubEnv, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id=repo_id)
    control = httpx2.post(
        f"{hub_env.endpoint}/_control/faults",
        json={"fail": {"pattern": rf"^GET /api/models/{repo_id}/revision/", "status": 404, "times": 1}},
    )
    assert control.status_code == 200
    with pytest.raises(HfHubHTTPError):
        api.model_info(repo_id, revision="main")
    assert api.model_info(repo_id, revision="main").sha  # the fault was used up

    # A fresh interpreter reads HF_ENDPOINT etc. at import, from hub_env.environ.
    script = (
        "import sys; from huggingface_hub import hf_hub_download; "
        f"sys.stdout.write(open(hf_hub_download({repo_id!r}, 'a.txt'), 'rb').read().decode())"
    )
    environ = {
        **hub_env.environ,
        "HF_HOME": str(tmp_path / "sub_home"),
        "HF_HUB_CACHE": str(tmp_path / "sub_hub"),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello"


def test_missing_token_is_a_clear_error(hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    api = HfApi()
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().create_repo(hub_env.new_repo_id("model"))
    assert err.value.response.status_code == 401
    assert "Authorization" in str(err.value) and "token" in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert err.value.response.status_code == 401
    assert "needs an 'Authorization: Bearer <token>' header" in str(err.value)
    assert api.list_repo_files(repo_id) == []  # reads of a public repo need no token
    monkeypatch.setenv("HF_TOKEN", hub_env.token)

    private_id = hub_env.new_repo_id("private")
    api.create_repo(private_id, private=True)
    assert api.repo_info(private_id).private
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(private_id, token=False)


def test_unknown_repo_revision_and_file(hub_env: HubEnv) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(f"{hub_env.user}/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{hub_env.user}/does-not-exist", "config.json")
    repo_id = hub_env.new_repo_id("model")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(repo_id, revision="f" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.json")
