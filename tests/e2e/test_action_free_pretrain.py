"""Action-free video from source to pretraining (issue 18): curate a robot dataset with actions
beside raw video without any, pretrain a few steps on the shards, and check

* the counts balance (every episode and window is in the shards or the ledger, the manifest
  counts the action-free ones, which are the all-False-mask rows of the shards);
* the video loss falls, on the mixed batches and on the action-free rows themselves;
* no action reaches those rows (the objective never keeps their actions, whatever they hold);
* fine-tuning leaves them out, counted.

Sources (made here, nothing committed): a LeRobot v3.0 dataset of two synthetic
``metaworld_sawyer`` episodes with actions, and a raw-video folder of two episodes written with
no step table (its mapping says ``"actions": false``), curated by the Ray job.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.formats.raw_video import write_raw_video
from curation.ingest import iter_episodes
from curation.pipeline import job_from_dict, run
from pretrain.codec import PixelPatchCodec
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.model import build_model
from pretrain.objective import ObjectiveConfig, PretrainObjective
from tests.support.helpers import make_episodes

pytestmark = pytest.mark.slow
STEPS = 20
PATCH = 2
# the settings of tests/test_pretrain.py's learning test: 2×2-pixel tokens, 32-dim heads
PRETRAIN_ARGS = ["--preset", "debug", "--steps", str(STEPS), "--batch-size", "4", "--lr", "2e-3"]
PRETRAIN_ARGS += ["--warmup-steps", "5", "--ckpt-every", "0", "--no-progress", "--threads", "1"]
PRETRAIN_ARGS += [
    "--codec-patch",
    str(PATCH),
    "--model-override",
    "heads=2",
    "--model-override",
    "head_dim=32",
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    episodes = make_episodes((24, 30, 26, 22))  # distinct frames per index: no near-duplicates
    robot = write_lerobot_v3(episodes[:2], root / "robot", repo_id="tests/robot", codec="h264")
    human = write_raw_video([ep.without_actions() for ep in episodes[2:]], root / "human")
    return {"robot": Path(robot), "human": Path(human)}


@pytest.fixture(scope="module")
def curated(sources, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "ds"
    job = {
        "sources": [str(sources["robot"]), str(sources["human"])],
        "out": str(out),
        "curation": {"preset": "debug"},
        "run": {"progress": False, "num_cpus": 2, "report": False},
    }
    run(job_from_dict(job))
    return out


@pytest.fixture(scope="module")
def pretrained(curated, tmp_path_factory) -> Path:
    from pipelines import pretrain

    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert pretrain.main([*PRETRAIN_ARGS, "--data", str(curated), "--out", str(out)]) == 0
    return out


def _shard_rows(curated: Path) -> list[dict]:
    cols = ["episode_id", "source", "action_mask", "state_mask", "action"]
    return [
        r
        for p in sorted((curated / "data").glob("*.parquet"))
        for r in pq.read_table(p, columns=cols).to_pylist()
    ]


def test_counts_balance_and_the_action_free_rows_are_counted(curated, sources):
    shards = ShardSet.open(curated)
    m = shards.manifest.validate()
    c = m.counts
    assert c["episodes_in"] == 4 == c["episodes_with_samples"] + c["episodes_rejected"]
    assert c["windows_in"] == c["samples"] + c["windows_rejected"]
    rows = _shard_rows(curated)
    free = [r for r in rows if not any(r["action_mask"])]
    assert c["episodes_without_actions"] == 2 and c["episodes_with_samples"] == 4
    assert c["samples_without_actions"] == len(free) > 0 and len(free) < len(rows) == c["samples"]
    assert {r["source"] for r in free} == {"human"}
    assert all(not any(r["state_mask"]) and not np.any(r["action"]) for r in free)
    # every episode of both sources is in the shards (the ledger holds only windows past the end)
    ids = {ep.episode_id for ep in iter_episodes(list(sources.values()))}
    assert ids == {r["episode_id"] for r in rows}
    assert {(r.stage, r.reason) for r in m.rejections} <= {("window", "past_end")}
    assert len([r for r in m.rejections if r.window >= 0]) == c["windows_rejected"]


def test_pretraining_trains_the_video_loss_and_no_action_loss(pretrained):
    metrics = [json.loads(ln) for ln in (pretrained / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert len(metrics) == STEPS
    assert not any("action" in k and "loss" in k for k in metrics[0]), metrics[0]  # video loss only
    video = [h["video_loss"] for h in metrics]
    first, last = float(np.mean(video[:5])), float(np.mean(video[-5:]))
    assert last < 0.8 * first, (first, last)
    # batches mixed both kinds: some steps kept fewer actions than the dropout alone would
    assert min(h["actions_kept"] for h in metrics) < 0.9


def _free_batch(curated: Path) -> dict:
    loader = ShardLoader(curated, LoaderConfig(batch_size=64, shuffle=False, drop_last=False))
    batch = next(iter(loader))
    free_B = ~batch["action_mask"].bool().any(dim=1)
    assert free_B.any() and not free_B.all()
    return {k: (v[free_B] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def test_the_video_loss_falls_on_the_action_free_rows_and_their_actions_are_never_used(curated, pretrained):
    from policy.model import load_backbone

    cfg, sd = load_backbone(pretrained / "final")
    trained = build_model(cfg).eval()
    trained.load_state_dict(sd)
    torch.manual_seed(0)
    untrained = build_model(cfg).eval()
    obj = PretrainObjective(ObjectiveConfig(action_dropout=0.0), PixelPatchCodec(PATCH), cfg.text_dim)
    batch = _free_batch(curated)
    assert not obj.actions_present(batch).any()  # never kept, even with no dropout at all

    def loss(model, b) -> float:
        with torch.no_grad():
            return obj.loss(model, b, torch.Generator().manual_seed(3))[0].item()

    assert loss(trained, batch) < 0.8 * loss(untrained, batch)
    # whatever sits in an action-free row's action tensor, its loss is the same: no action is used
    noisy = dict(batch, action=torch.randn_like(batch["action"]) * 3)
    assert loss(trained, noisy) == loss(trained, batch)


def test_fine_tuning_leaves_the_action_free_rows_out(curated):
    from pipelines.finetune import rows_with_actions

    shards = ShardSet.open(curated)
    kept, left_out = rows_with_actions(shards)
    c = shards.manifest.counts
    assert left_out == c["samples_without_actions"] and kept.num_rows == c["samples"] - left_out
    free_only = shards.select([[i for i, r in enumerate(pq.read_table(p, columns=["action_mask"]).to_pylist())
                                if not any(r["action_mask"])] for p in shards.shards])  # fmt: skip
    with pytest.raises(ValueError, match="video without actions; a policy needs samples with actions"):
        rows_with_actions(free_only)
