"""Publishing datasets and models through the Hub: the real huggingface_hub / datasets clients against
the local Hub server (``tests/support/hub_server.py``), no mocks of either.

Covers: a curated dataset pushed with a card that ``datasets.load_dataset`` loads row for row, the chunked
layout past the files-per-folder limit, uploads in several commits, the shard loader reading the repo at a
pinned revision; a model pushed and rebuilt with identical outputs in a fresh cache; unchanged re-pushes
making no commit; changed files giving a new pinnable revision and stale files deleted; a dropped upload and
a failed commit retried to a whole repo; clear errors for a missing token, unknown repo/revision and
mismatched weights; the ``gwp publish`` command line.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image

import schemas
from curation.publish import CHUNK_GLOB, publish_dataset
from curation.shards import LEDGER_PATH, REPORT_DIR, sample_table, write_manifest, write_shard
from pipelines import publish as publish_cli
from pretrain.data import ShardSet, resolve_dataset
from pretrain.hub import HubMixin
from schemas import DimStats, EmbodimentStats, Manifest, Rejection, SourceInput
from schemas.hub.client import (
    HubAuthError,
    HubError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    UploadSettings,
)
from tests.support.samples import tall_png, window_sample

if TYPE_CHECKING:
    from tests.support.hub_fixture import HubEnv

pytest_plugins = ["tests.support.hub_fixture"]  # the `hub_server` / `hub_env` fixtures

P, K, H, W = 2, 1, 4, 4
FAST = UploadSettings(backoff_s=0.05)


# ---- a tiny curated dataset ----------------------------------------------------------------------


def sample_row(i: int, embodiment: str = "metaworld_sawyer") -> dict:
    frames = np.random.default_rng(i).integers(0, 256, (1 + K, H, W, 3), dtype=np.uint8)
    return (
        window_sample(
            f"ep{i // 3}",
            i,
            action_Pd=np.full((P, 4), i / 10),
            state_d=np.full(4, -i / 10),
            num_future=K,
            source="synthetic" if i % 2 else "sim",
            embodiment=embodiment,
            instruction=f"push the puck {i}",
            video=tall_png(frames),
            height=H,
            width=W,
        )
        .validate()
        .to_row()
    )


def make_dataset(root: Path, shard_rows: tuple[int, ...] = (3, 2), offset: int = 0) -> list[str]:
    """Shards + rejections + report + manifest (written last), plus private files; returns sample ids."""
    ids, infos, i = [], [], offset
    for index, n in enumerate(shard_rows):
        rows = [sample_row(i + j) for j in range(n)]
        ids += [r["sample_id"] for r in rows]
        infos.append(write_shard(root, index, sample_table(rows), compression="zstd", row_group_rows=64))
        i += n
    rejections = (
        Rejection("filter.static_video", "static_video", "/src/a.mp4", "ep9", "no motion"),
        Rejection("filter.static_video", "static_video", "/src/b.mp4", "ep10"),
        Rejection("load", "nan_action", "/src/c.hdf5", "ep11", "NaN in action[3]"),
    )
    (root / "meta").mkdir(exist_ok=True)
    pq.write_table(schemas.to_table(list(rejections)), root / LEDGER_PATH)
    (root / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    (root / REPORT_DIR / "index.md").write_text("# Curated dataset report\n\n![Sample frames](samples.png)\n")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / REPORT_DIR / "samples.png")
    (root / ".work").mkdir(exist_ok=True)
    (root / ".work" / "state.json").write_text("{}")
    (root / ".lock").write_text("pid 1 on nowhere\n")
    st = DimStats(*(((0.0,) * 4,) * 6), count=len(ids))
    n_eps = len({j // 3 for j in range(offset, i)})  # sample_row puts 3 windows in an episode
    write_manifest(
        root,
        Manifest(
            code_version="test",
            config={"window": {"chunk": P}},
            counts={
                "episodes_in": n_eps + 3,
                "episodes_with_samples": n_eps,
                "episodes_rejected": 3,
                "samples": len(ids),
            },
            stats={"metaworld_sawyer": EmbodimentStats("metaworld_sawyer", st, st)},
            sources=(SourceInput("/src/demos.hdf5", "hdf5_robomimic", "a" * 64, 4),),
            shards=tuple(infos),
            rejections=rejections,
        ),
    )
    return ids


def test_publish_dataset_loads_with_datasets_and_the_shard_loader(hub_env: HubEnv, tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "curated"
    ids = make_dataset(folder)
    repo_id = hub_env.new_repo_id("dataset")
    result = publish_dataset(folder, repo_id, settings=replace(FAST, files_per_commit=2))

    remote = hub_env.server.files_at(repo_id, "dataset")
    assert set(remote) == {
        "README.md",
        "data/shard-00000.parquet",
        "data/shard-00001.parquet",
        "meta/manifest.json",
        "meta/rejections.parquet",
        "meta/report/index.md",
        "meta/report/samples.png",
    }  # no .work/, no .lock
    assert remote["data/shard-00001.parquet"] == (folder / "data/shard-00001.parquet").read_bytes()
    # 5 body files in rounds of 2, then manifest + card: 4 commits on top of the repo's initial one
    assert result.new_commits == 4 and len(hub_env.server.history(repo_id, "dataset")) == 5
    titles = [c.title for c in HfApi().list_repo_commits(repo_id, repo_type="dataset")]
    assert titles[0].endswith("(4/4)") and titles[3].endswith("(1/4)")
    card = remote["README.md"].decode()
    assert f'load_dataset("{repo_id}", split="train")' in card
    assert "path: data/*.parquet" in card and "config_name: rejections" in card
    assert "| filter.static_video | static_video | 2 |" in card and "| load | nan_action | 1 |" in card
    assert "| metaworld_sawyer | 5 |" in card and "![example frames](meta/report/samples.png)" in card

    loaded = datasets.load_dataset(repo_id)
    assert list(loaded) == ["train"]
    assert sorted(loaded["train"]["sample_id"]) == sorted(ids)
    for row in loaded["train"]:
        assert np.allclose(row["action"], np.pad(np.full((P, 4), row["start_frame"] / 10), ((0, 0), (0, 28))))
        assert Image.open(io.BytesIO(row["video"])).size == (W, H * (1 + K))
    ledger = datasets.load_dataset(repo_id, "rejections", split="train")
    assert sorted(ledger["reason"]) == ["nan_action", "static_video", "static_video"]

    # the training loader reads the repo at the pinned commit
    root = resolve_dataset(repo_id, revision=result.commit, cache_dir=str(tmp_path / "loader_cache"))
    shards = ShardSet.open(root)
    assert shards.num_rows == len(ids)
    assert [p.name for p in shards.shards] == ["shard-00000.parquet", "shard-00001.parquet"]


def test_chunked_layout_past_the_files_per_folder_limit(hub_env: HubEnv, tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "curated"
    ids = make_dataset(folder, shard_rows=(2, 1, 2))
    repo_id = hub_env.new_repo_id("dataset")
    result = publish_dataset(folder, repo_id, max_files_per_folder=2, shards_per_chunk=2, settings=FAST)

    remote = hub_env.server.files_at(repo_id, "dataset")
    assert sorted(p for p in remote if p.startswith("data/")) == [
        "data/chunk-000/shard-00000.parquet",
        "data/chunk-000/shard-00001.parquet",
        "data/chunk-001/shard-00002.parquet",
    ]
    assert f"path: {CHUNK_GLOB}" in remote["README.md"].decode()
    published = Manifest.from_json(remote["meta/manifest.json"].decode())
    assert [s.name for s in published.shards] == sorted(p for p in remote if p.startswith("data/"))
    assert "shard-00000" in (folder / "meta/manifest.json").read_text()  # the local folder is untouched
    assert sorted(datasets.load_dataset(repo_id, split="train")["sample_id"]) == sorted(ids)
    shards = ShardSet.open(repo_id, revision=result.commit, cache_dir=str(tmp_path / "c"))
    assert shards.num_rows == len(ids)


def test_republish_is_noop_then_changes_make_a_new_pinnable_revision(hub_env: HubEnv, tmp_path: Path) -> None:
    folder = tmp_path / "curated"
    old_ids = make_dataset(folder, shard_rows=(2, 2))
    repo_id = hub_env.new_repo_id("dataset")
    first = publish_dataset(folder, repo_id, settings=FAST)
    history = hub_env.server.history(repo_id, "dataset")

    writes = rf"^POST /api/datasets/{repo_id}/(preupload|commit)/"
    n_writes = len(hub_env.server.requests_matching(writes))
    again = publish_dataset(folder, repo_id, settings=FAST)
    assert again.new_commits == 0 and again.commit == first.commit
    assert hub_env.server.history(repo_id, "dataset") == history
    assert len(hub_env.server.requests_matching(writes)) == n_writes  # nothing was even pre-uploaded

    # A re-run with one shard fewer and different rows: changed shard uploaded, stale shard deleted.
    for p in (folder / "data").glob("*.parquet"):
        p.unlink()
    new_ids = make_dataset(folder, shard_rows=(3,), offset=100)
    second = publish_dataset(folder, repo_id, settings=FAST)
    assert second.commit != first.commit and second.deleted == ("data/shard-00001.parquet",)
    assert "data/shard-00000.parquet" in second.uploaded
    assert sorted(p for p in hub_env.server.files_at(repo_id, "dataset") if p.startswith("data/")) == [
        "data/shard-00000.parquet"
    ]
    old = ShardSet.open(repo_id, revision=first.commit, cache_dir=str(tmp_path / "c1"))
    new = ShardSet.open(repo_id, revision=second.commit, cache_dir=str(tmp_path / "c2"))
    assert old.num_rows == len(old_ids) == 4 and new.num_rows == len(new_ids) == 3
    old_rows = {
        r for p in old.shards for r in pq.read_table(p, columns=["sample_id"])["sample_id"].to_pylist()
    }
    assert old_rows == set(old_ids)

    # a branch of its own, main untouched
    branch = publish_dataset(folder, repo_id, revision="v2-exp", settings=FAST)
    assert branch.revision == "v2-exp" and hub_env.server.history(repo_id, "dataset")[0] == second.commit


def test_dropped_connection_and_failed_commit_are_retried(hub_env: HubEnv, tmp_path: Path) -> None:
    folder = tmp_path / "curated"
    make_dataset(folder, offset=500)  # content no other test stored (LFS objects are shared server-wide)
    repo_id = hub_env.new_repo_id("dataset")
    # an earlier, interrupted run got one shard in: the publish resumes instead of re-sending it
    HfApi().create_repo(repo_id, repo_type="dataset")
    HfApi().upload_file(
        path_or_fileobj=folder / "data/shard-00000.parquet",
        path_in_repo="data/shard-00000.parquet",
        repo_id=repo_id,
        repo_type="dataset",
    )
    puts_pattern = rf"^PUT /_lfs/dataset/{repo_id}/"
    commit_pattern = rf"^POST /api/datasets/{repo_id}/commit/"
    n_puts, n_commits = (len(hub_env.server.requests_matching(p)) for p in (puts_pattern, commit_pattern))
    hub_env.server.drop_lfs_uploads(1)  # cut mid-body: the client re-sends the object
    hub_env.server.fail_requests(rf"^POST /api/datasets/{repo_id}/commit/", 503, times=1)  # our round retry
    result = publish_dataset(folder, repo_id, settings=replace(FAST, files_per_commit=2))

    assert hub_env.server.pending_faults() == 0
    puts = [s for _, _, s in hub_env.server.requests_matching(puts_pattern)[n_puts:]]
    assert puts == [-1, 200]  # shard 1 only; the ledger's bytes are already stored by other tests
    assert "data/shard-00000.parquet" not in result.uploaded and "data/shard-00001.parquet" in result.uploaded
    commits = [s for _, _, s in hub_env.server.requests_matching(commit_pattern)[n_commits:]]
    assert commits[0] == 503 and commits.count(200) == result.new_commits
    remote = hub_env.server.files_at(repo_id, "dataset")
    for rel in ("data/shard-00000.parquet", "data/shard-00001.parquet", "meta/rejections.parquet"):
        assert remote[rel] == (folder / rel).read_bytes()
    assert ShardSet.open(repo_id, revision=result.commit, cache_dir=str(tmp_path / "c")).num_rows == 5


def test_failure_after_retries_is_reported_and_a_rerun_completes(hub_env: HubEnv) -> None:
    model = tiny_policy(2)
    repo_id = hub_env.new_repo_id("model")
    hub_env.server.fail_requests(rf"^POST /api/models/{repo_id}/commit/", 503, times=2)
    with pytest.raises(HubError, match=rf"model repo '{repo_id}' .*answered HTTP 503"):
        model.push_to_hub(repo_id, settings=replace(FAST, retries=1))
    assert hub_env.server.files_at(repo_id) == {}  # nothing half-committed
    assert model.push_to_hub(repo_id, settings=FAST).new_commits == 1
    assert set(hub_env.server.files_at(repo_id)) == {
        "model.safetensors",
        "config.json",
        "norm_stats.json",
        "README.md",
    }


# ---- models ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyConfig:
    name: str = "tiny"
    dims: tuple[int, ...] = (6, 8, 3)
    activation: str = "gelu"


class TinyPolicy(HubMixin, torch.nn.Module):
    config_class = TinyConfig

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(cfg.dims, cfg.dims[1:], strict=False)
        )
        self.register_buffer("scale_D", torch.ones(cfg.dims[-1]))

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x_BD = layer(x_BD)
            if i < len(self.layers) - 1:
                x_BD = torch.nn.functional.gelu(x_BD)
        return x_BD * self.scale_D


def tiny_policy(seed: int = 0) -> TinyPolicy:
    torch.manual_seed(seed)
    model = TinyPolicy(TinyConfig()).eval()
    st = DimStats((0.1,) * 3, (1.0,) * 3, (-1.0,) * 3, (1.0,) * 3, (-0.9,) * 3, (0.9,) * 3, count=7)
    model.norm_stats = {"metaworld_sawyer": EmbodimentStats("metaworld_sawyer", st, st)}
    return model


CARD = {
    "dataset_repo": "tester/curated",
    "dataset_revision": "a" * 40,
    "train_config": {"lr": 1e-4, "steps": 10},
    "eval_results": {"metaworld/push": {"success_rate": 0.75}},
}


def test_push_model_then_from_pretrained_in_a_fresh_cache(hub_env: HubEnv, tmp_path: Path) -> None:
    model = tiny_policy()
    repo_id = hub_env.new_repo_id("model")
    result = model.push_to_hub(repo_id, card_data=CARD, settings=FAST)
    assert result.new_commits == 1  # weights, config, stats and card together
    assert set(hub_env.server.files_at(repo_id)) == {
        "model.safetensors",
        "config.json",
        "norm_stats.json",
        "README.md",
    }

    loaded = TinyPolicy.from_pretrained(repo_id, cache_dir=tmp_path / "fresh")
    x = torch.randn(5, 6)
    assert loaded.cfg == model.cfg and isinstance(loaded.cfg.dims, tuple)
    assert torch.equal(loaded(x), model(x))
    assert loaded.norm_stats == model.norm_stats
    card = Path(HfApi().hf_hub_download(repo_id, "README.md")).read_text()
    n_params = sum(p.numel() for p in model.parameters())
    assert f"parameters: {n_params:,}" in card and "preset `tiny`" in card
    assert (
        f"`tester/curated` at revision `{'a' * 40}`" in card
        and "| metaworld/push | success_rate | 0.75 |" in card
    )
    assert '"lr": 0.0001' in card and "datasets:\n- tester/curated" in card
    config = json.loads(Path(HfApi().hf_hub_download(repo_id, "config.json")).read_text())
    assert config["model_class"].endswith("TinyPolicy") and config["config"]["dims"] == [6, 8, 3]

    # unchanged: no new commit; changed weights: a new revision, and the old one stays loadable
    history = hub_env.server.history(repo_id)
    assert model.push_to_hub(repo_id, card_data=CARD, settings=FAST).new_commits == 0
    assert hub_env.server.history(repo_id) == history
    with torch.no_grad():
        model.layers[0].weight.add_(1.0)
    model.norm_stats = None
    second = model.push_to_hub(repo_id, card_data=CARD, settings=FAST)
    assert second.commit != result.commit and second.uploaded == ("model.safetensors",)
    assert second.deleted == ("norm_stats.json",)
    old = TinyPolicy.from_pretrained(repo_id, revision=result.commit, cache_dir=tmp_path / "c2")
    new = TinyPolicy.from_pretrained(repo_id, cache_dir=tmp_path / "c2")
    assert torch.equal(new(x), model(x)) and not torch.equal(old(x), model(x))
    assert old.norm_stats is not None and new.norm_stats is None


def test_local_round_trip_and_strict_load_errors(tmp_path: Path) -> None:
    model = tiny_policy(1)
    folder = model.save_pretrained(tmp_path / "m")
    assert torch.equal(TinyPolicy.from_pretrained(folder).layers[1].bias, model.layers[1].bias)

    # weights of another version of the code: missing and unexpected keys are named
    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.1.")}
    save_file({**state, "head.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"missing keys \['layers.1.bias', 'layers.1.weight'\], unexpected keys \['head.weight'\]",
    ):
        TinyPolicy.from_pretrained(folder)
    # weights of another shape: named by the file, with torch's size message
    other = TinyPolicy(TinyConfig(dims=(6, 3)))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(
        ValueError, match=r"(?s)other/model.safetensors: weights do not fit .*size mismatch for layers.0"
    ):
        TinyPolicy.from_pretrained(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match=r"no such local folder, and not a Hub repo id"):
        TinyPolicy.from_pretrained(tmp_path / "nowhere")

    class Other(HubMixin, torch.nn.Module):
        config_class = TinyConfig

    with pytest.raises(TypeError, match=r"holds a .*TinyPolicy, not a .*Other"):
        Other.from_pretrained(folder)


def test_real_transformer_config_round_trips(tmp_path: Path) -> None:
    """The project's transformer with its ModelConfig (tuple fields, from_dict) through the mixin."""
    from pretrain.config import ModelConfig, get_model_config
    from pretrain.model import ActionVideoTransformer

    class HubTransformer(HubMixin, ActionVideoTransformer):
        config_class = ModelConfig

    cfg = replace(get_model_config("debug"), text_dim=8, mlp_hidden=16)
    torch.manual_seed(0)
    model = HubTransformer(cfg)
    loaded = HubTransformer.from_pretrained(model.save_pretrained(tmp_path / "t"))
    assert loaded.cfg == cfg
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_clear_errors_for_token_repo_and_revision(
    hub_env: HubEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    model = tiny_policy()
    repo_id = hub_env.new_repo_id("model")
    model.push_to_hub(repo_id, settings=FAST)

    with pytest.raises(
        HubRepoNotFoundError, match=rf"model repo '{hub_env.user}/no-such-model' on .* does not exist"
    ):
        TinyPolicy.from_pretrained(f"{hub_env.user}/no-such-model", cache_dir=tmp_path / "c")
    with pytest.raises(HubRevisionNotFoundError, match=r"revision 'nope' not found .*\(branches: main\)"):
        TinyPolicy.from_pretrained(repo_id, revision="nope", cache_dir=tmp_path / "c")

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAuthError, match=r"no Hugging Face token\. Set the HF_TOKEN"):
        model.push_to_hub(repo_id, settings=FAST)
    folder = tmp_path / "curated"
    make_dataset(folder, shard_rows=(1,))
    assert publish_cli.main(["dataset", str(folder), "--repo-id", hub_env.new_repo_id("dataset")]) == 1
    assert "no Hugging Face token. Set the HF_TOKEN environment variable" in capsys.readouterr().err
    assert TinyPolicy.from_pretrained(repo_id, cache_dir=tmp_path / "c3") is not None  # reads need no token


def test_cli_publishes_dataset_and_model(hub_env: HubEnv, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "curated"
    make_dataset(folder, shard_rows=(2,))
    ds_id = hub_env.new_repo_id("dataset")
    assert publish_cli.main(["dataset", str(folder), "--repo-id", ds_id, "--license", "apache-2.0"]) == 0
    out = capsys.readouterr().out
    head = HfApi().repo_info(ds_id, repo_type="dataset").sha
    assert f"dataset {ds_id}@main" in out and head in out
    assert "license: apache-2.0" in hub_env.server.files_at(ds_id, "dataset")["README.md"].decode()
    assert publish_cli.main(["dataset", str(folder), "--repo-id", ds_id, "--license", "apache-2.0"]) == 0
    assert "already up to date, no commit" in capsys.readouterr().out
    assert publish_cli.main(["dataset", str(folder), "--repo-id", ds_id]) == 0  # the card keeps its license
    assert "already up to date, no commit" in capsys.readouterr().out
    assert publish_cli.main(["dataset", str(folder), "--repo-id", ds_id, "--license", "mit"]) == 0
    assert "1 files in 1 commits" in capsys.readouterr().out  # the card changes
    assert "license: mit" in hub_env.server.files_at(ds_id, "dataset")["README.md"].decode()

    model_dir = tiny_policy().save_pretrained(tmp_path / "model")
    model_id = hub_env.new_repo_id("model")
    assert (
        publish_cli.main(["model", str(model_dir), "--repo-id", model_id, "--revision", "exp", "--private"])
        == 0
    )
    assert HfApi().repo_info(model_id).private
    assert (
        hub_env.server.files_at(model_id, revision="exp")["config.json"]
        == (model_dir / "config.json").read_bytes()
    )

    assert publish_cli.main(["model", str(folder), "--repo-id", model_id]) == 1  # a dataset is not a model
    assert "config.json: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        publish_cli.main(["model", str(model_dir)])
    assert err.value.code == 2
