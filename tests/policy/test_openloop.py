"""Held-out split, held-out checks during fine-tuning, and open-loop evaluation with its report.

The dataset is the tiny curated shard folder of ``tests.policy.test_policy`` (simulated episodes through
curation's pure stages), here with six episodes so that a 1/3 split holds out two.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines import evaluate_openloop, finetune
from policy.heldout import HELDOUT_FILE, heldout_episodes, select_episodes, split_shards
from policy.model import GWPPolicyModel
from policy.openloop import (
    ActionErrors,
    OpenLoopConfig,
    iter_batches,
    psnr,
    spread_subset,
    ssim,
)
from policy.openloop import (
    evaluate_openloop as run_openloop,
)
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from schemas.normalize import affine_of
from tests.policy.test_policy import build_shards

LENGTHS = (20, 22, 24, 26, 28, 30)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardSet:
    root = tmp_path_factory.mktemp("openloop")
    data, _ = build_shards(root / "shards", LENGTHS)
    return ShardSet.open(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shards):
    """A 3-step fine-tune with a held-out check every step, λ_v = 0 and custom shifts."""
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["--preset", "debug", "--init", "none", "--model", "debug", "--data", str(shards.root)]
    argv += ["--out", str(out), "--steps", "3", "--batch-size", "2", "--ckpt-every", "0", "--no-progress"]
    argv += ["--heldout-fraction", "0.34", "--eval-every", "1", "--heldout-samples", "6"]
    argv += ["--video-weight", "0", "--action-weight", "2.5", "--action-shift", "3", "--video-shift", "1.5"]
    assert finetune.main(argv) == 0
    return out


def episodes_of(s: ShardSet) -> list[str]:
    return [e for b in iter_batches(s, 8) for e in b["episode_id"]]


# ---------------------------------------------------------------- the split


def test_heldout_episodes_are_deterministic_and_sized():
    ids = [f"ep-{i:03d}" for i in range(50)]
    held = heldout_episodes(ids, 0.1, seed=0)
    assert len(held) == 5 and set(held) <= set(ids)
    assert heldout_episodes(reversed(ids + ids), 0.1, seed=0) == held  # order and repeats do not matter
    assert heldout_episodes(ids, 0.1, seed=1) != held
    assert heldout_episodes(ids[:3], 0.01) and len(heldout_episodes(ids[:2], 0.9)) == 1  # ≥ 1, ≤ N − 1
    assert heldout_episodes(ids, 0.0) == []
    with pytest.raises(ValueError, match="fraction"):
        heldout_episodes(ids, 1.0)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        heldout_episodes(ids[:1], 0.5)


def test_split_is_by_episode_and_covers_every_row(shards):
    split = split_shards(shards, 0.34, seed=0)
    assert len(split.heldout_episodes) == 2 and split.train_episodes == 4
    train, held = episodes_of(split.train), episodes_of(split.heldout)
    assert set(held) == set(split.heldout_episodes)
    assert not set(train) & set(held)
    assert len(train) + len(held) == shards.num_rows == split.train.num_rows + split.heldout.num_rows
    # the training loader sees only training episodes, and the view nests
    batch = next(iter(ShardLoader(split.train, LoaderConfig(batch_size=4))))
    assert set(batch["episode_id"]) <= set(train)
    again = select_episodes(split.train, [train[0]])
    assert set(episodes_of(again)) == {train[0]}
    with pytest.raises(ValueError, match="outside"):
        shards.select([[10**6]] + [[]] * (len(shards.shards) - 1))


def test_spread_subset_reaches_every_part_of_the_data(shards):
    sub = spread_subset(shards, 6)
    assert sub.num_rows == 6
    assert len(set(episodes_of(sub))) >= 4  # not just the first episode's windows


# ---------------------------------------------------------------- metrics


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.all(psnr(x, x) == 100.0)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.all(ssim(noisy, x) < 0.99) and torch.all(psnr(noisy, x) < 30)
    assert torch.all(psnr(noisy, x) > psnr(1 - x, x))
    # PSNR of a constant error e is -20·log10(e)
    assert torch.allclose(
        psnr(torch.full((1, 3, 8, 8), 0.6), torch.full((1, 3, 8, 8), 0.5)), torch.tensor([20.0])
    )


def test_ssim_matches_scikit_image():
    """Golden values of ``skimage.metrics.structural_similarity(x, y, channel_axis=0,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)`` (Wang et al.
    2004 as scikit-image 0.26 implements it), computed once for these images."""
    i, j = torch.arange(24.0)[:, None], torch.arange(20.0)[None, :]
    x = torch.stack([0.5 + 0.4 * torch.sin(0.3 * i + 0.7 * j + c) for c in range(3)])
    others = {
        "added texture": (x + 0.15 * torch.cos(0.5 * i - 0.2 * j * j / 7)).clamp(0, 1),
        "contrast and brightness": 0.6 * x + 0.1,
        "shifted pattern": torch.stack(
            [0.5 + 0.4 * torch.sin(0.31 * i + 0.69 * j + c + 0.5) for c in range(3)]
        ),
    }
    golden = {"added texture": 0.9282601, "contrast and brightness": 0.8626556, "shifted pattern": 0.8477416}
    for name, y in others.items():
        assert ssim(y[None], x[None]).item() == pytest.approx(golden[name], abs=2e-6), name
    # constant images: only the luminance term is left, (2ab + c1) / (a² + b² + c1)
    a, b, c1 = 0.3, 0.7, 0.01**2
    const = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert const.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_residual_video_target_makes_the_zero_model_repeat_the_observation(shards):
    """With ``video_residual`` the video head predicts future − observation: a zero head samples the
    observation frame repeated from any noise, and the video loss is the MSE of that clean residual.
    Without it the head predicts a velocity, and a zero one leaves the noise in place."""
    from dataclasses import replace

    from policy.openloop import predict_batch

    settings = finetune.data_settings(shards)
    batch = next(iter(iter_batches(shards, 3)))
    for residual in (False, True):
        torch.manual_seed(0)
        model = finetune.build_policy("none", None, "debug", settings, "pixel", {"patch": 4})
        model = GWPPolicyModel(replace(model.cfg, model=replace(model.cfg.model, video_residual=residual)))
        model.norm_stats = settings["stats"]
        for p in model.transformer.video_out.proj.parameters():
            torch.nn.init.zeros_(p)
        obs, fut = model.batch_latents(batch)
        a0 = torch.zeros(3, model.cfg.model.chunk, 32)
        noise = 0.3 * torch.randn(fut.shape, generator=torch.Generator().manual_seed(1))
        _, frames = predict_batch(model, batch, a0, noise, num_steps=3)
        if residual:
            want = batch["obs_frames"][:, :, None].expand_as(frames).float()
        else:
            want = model.codec.decode(noise).clamp(-1, 1)
        torch.testing.assert_close(frames, want, atol=1e-5, rtol=0)
        g = torch.Generator().manual_seed(3)
        _, parts = model.joint_loss(batch, generator=g)
        from pretrain.flow import sample_sigma

        g = torch.Generator().manual_seed(3)  # the joint loss's draws: σ_a, σ_v, ε_a, ε_v
        sample_sigma(3, model.cfg.flow.action_shift, g)
        sample_sigma(3, model.cfg.flow.video_shift, g)
        torch.randn(batch["action"].shape, generator=g)
        eps = torch.randn(fut.shape, generator=g)
        target = fut - obs if residual else eps - fut  # zero head: the loss is the target's square
        assert parts["video_loss"].item() == pytest.approx((target**2).mean().item(), rel=1e-5)


def test_action_errors_are_exact_in_both_units(shards):
    model = finetune.build_policy(
        "none", None, "debug", finetune.data_settings(shards), "pixel", {"patch": 4}
    )
    spec = model.cfg.embodiments[0]
    true = torch.zeros(2, model.cfg.model.chunk, 32)
    pred = true.clone()
    pred[:, :, 1] = 0.5  # error 0.5 on dim 1 only (normalised units)
    errs = ActionErrors(model)
    errs.add(pred, true, torch.full((2,), spec.id))
    s = errs.summary()
    per = s["per_embodiment"][spec.name]
    assert per["mse"] == pytest.approx([0, 0.25, 0, 0])
    _, half = affine_of(model.norm_stats[spec.name].action, model.cfg.norm)
    assert per["mse_robot"] == pytest.approx([0, 0.25 * half[1] ** 2, 0, 0], rel=1e-5)
    assert s["action_mse"] == pytest.approx(0.25 / spec.action_dim)


def test_openloop_is_repeatable_and_leaves_the_global_rng_alone(shards):
    model = finetune.build_policy(
        "none", None, "debug", finetune.data_settings(shards), "pixel", {"patch": 4}
    )
    cfg = OpenLoopConfig(max_samples=4, batch_size=3, picture_samples=2)
    torch.manual_seed(123)
    m1, pics = run_openloop(model, shards, cfg)
    after = torch.rand(1)
    torch.manual_seed(123)
    m2, _ = run_openloop(model, shards, cfg)
    assert torch.equal(after, torch.rand(1))
    assert m1 == m2 and m1["samples"] == 4
    assert len(m1["per_embodiment"]["metaworld_sawyer"]["mse"]) == 4
    v = m1["video"]
    assert len(v["psnr_per_frame"]) == 2 and 0 < v["psnr"] < 100 and -1 <= v["ssim"] <= 1
    assert pics["real"].shape == pics["pred"].shape == (2, 2, 64, 64, 3) and pics["obs"].shape == (
        2,
        64,
        64,
        3,
    )
    # another noise seed gives other samples
    m3, _ = run_openloop(model, shards, OpenLoopConfig(max_samples=4, noise_seed=5, video=False))
    assert m3["action_mse"] != m1["action_mse"] and "video" not in m3


# ---------------------------------------------------------------- fine-tuning and the CLI


def test_finetune_records_heldout_curve_and_loss_weights(run):
    lines = [json.loads(x) for x in (run / HELDOUT_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3]  # every step, then the exported weights
    assert lines[-1]["weights"] == "final" and "weights" not in lines[0]
    for r in lines:
        assert r["samples"] == 6 and np.isfinite(r["action_mse"]) and r["action_mse_robot"] > 0
        assert len(r["per_embodiment"]["metaworld_sawyer"]["mse_robot"]) == 4
    record = json.loads((run / "final" / "training.json").read_text())
    held = record["heldout"]
    assert len(held["episodes"]) == 2 and held["fraction"] == 0.34 and held["check"]["eval_every"] == 1
    assert held["train_rows"] + held["heldout_rows"] == record["data"]["rows"]
    flow = json.loads((run / "final" / "config.json").read_text())["config"]["flow"]
    assert flow["video_weight"] == 0 and flow["action_weight"] == 2.5
    assert flow["action_shift"] == 3 and flow["video_shift"] == 1.5
    model = GWPPolicyModel.from_pretrained(run / "final")
    assert model.cfg.flow.video_weight == 0 and model.cfg.flow.action_shift == 3
    # λ_v = 0: the video term is still logged but does not enter the loss
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == pytest.approx(2.5 * r["action_loss"], rel=1e-5) for r in m)


def test_openloop_cli_on_the_heldout_episodes(run, shards, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--policy", str(run / "final"), "--data", str(shards.root), "--out", str(out)]
    assert evaluate_openloop.main([*argv, "--max-samples", "5", "--pictures", "2"]) == 0
    metrics = json.loads((out / "openloop.json").read_text())
    held = set(json.loads((run / "final" / "training.json").read_text())["heldout"]["episodes"])
    held_rows = select_episodes(shards, held).num_rows
    assert metrics["split"] == "heldout" and metrics["samples"] == min(5, held_rows)
    assert {"psnr", "ssim", "copy_baseline"} <= set(metrics["video"])
    md = (out / "openloop.md").read_text()
    assert "| dx |" in md and "frames.png" in md and "PSNR" in md
    # the repeat baseline per future frame, and the verdict against it (both metrics must be above)
    base = metrics["video"]["copy_baseline"]
    assert len(base["psnr_per_frame"]) == len(base["ssim_per_frame"]) == 2 and "| repeated t+2 |" in md
    above = metrics["video"]["psnr"] > base["psnr"] and metrics["video"]["ssim"] > base["ssim"]
    assert ("are **above** the repeated observation" in md) == above
    assert ("are **not above** the repeated observation" in md) == (not above)
    for png in ("frames.png", "action_error.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "open loop on" in capsys.readouterr().out
    # a policy folder without a fine-tuning record cannot name its held-out episodes
    bare = tmp_path / "bare"
    GWPPolicyModel.from_pretrained(run / "final").save_pretrained(bare)
    assert evaluate_openloop.main(["--policy", str(bare), "--data", str(shards.root), "--out", str(out)]) == 2
    assert "--split all" in capsys.readouterr().err
