"""Latents and text embeddings made once, in curation (issue #21): training from them equals training
that encodes on the fly, and the encoders never run while training.

Tiny random models of the real architectures, built from their libraries' configs
(``tests/e2e/test_real_gwp_path.py``): a Wan2.2-TI2V-5B-shaped ``AutoencoderKLWan`` (48 channels,
16× spatial, 4× temporal) and a umT5 encoder. A few simulated episodes (LeRobot v3.0) are curated
twice by the Ray job, with umT5 token states and K = 4 future frames (one latent frame of the
VAE's 4× temporal compression: GWP's one-clip geometry):

* ``stored``: with the latent stage (``latents`` section: the Wan VAE as one clip), so the shards
  carry every sample's latents and the manifest the codec's identity;
* ``frames``: without it, so training runs the VAE over the frames of every batch.

Then the same pretraining run (debug model in the clip geometry, the Wan VAE as codec, same
seed) on each for a few steps. The stored run goes with a spy on the VAE's encoder and on the
text encoder's factory that raise if called; the frames run counts the VAE calls, which must
happen. The losses agree to float tolerance (see ``RTOL``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.pipeline import job_from_dict, run
from tests.e2e.test_real_gwp_path import INSTRUCTIONS, SIZE, WORDS, clip_curation, save_wan22
from tests.pretrain.wan_tiny import WAN22_TRANSFORMER
from tests.support.helpers import make_episodes
from tests.support.tiny_umt5 import save_tiny_umt5

pytestmark = pytest.mark.slow
STEPS = 3
# The stored latents are the VAE's float32 output, stored as float32: bit for bit what the codec
# gives. What may differ is the VAE's own arithmetic: curation encodes a batch of up to 8 clips,
# training the 2 of a batch, and a convolution may sum in another order at another batch size
# (float32, ~1e-7 relative per value). Three steps of a tiny model amplify that by far less than
# 1e3, so 1e-4 relative separates "the same computation" from any real difference (another codec,
# another geometry or other data move the loss by percents).
RTOL = 1e-4
TRAIN_ARGS = ["--preset", "debug", "--model-override", "video_geometry=clip", "--codec", "wan-vae"]
TRAIN_ARGS += ["--steps", str(STEPS), "--batch-size", "2", "--ckpt-every", "0", "--no-progress"]
TRAIN_ARGS += ["--threads", "1"]


def curate(source: Path, out: Path, umt5: Path, latents: dict | None) -> Path:
    from pretrain.stored_latents import latent_encoder_from_config
    from pretrain.text_encoder import text_encoder_from_config

    job = {
        "sources": [str(source)],
        "out": str(out),
        "curation": clip_curation(umt5),
        "latents": latents,
        "run": {"progress": False, "num_cpus": 2, "report": False},
    }
    run(
        job_from_dict(job),
        text_encoder=text_encoder_from_config,
        latent_encoder=latent_encoder_from_config if latents else None,
    )
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "wan": save_wan22(root / "wan22"),
        "umt5": save_tiny_umt5(root / "umt5", WORDS, seed=1, d_model=WAN22_TRANSFORMER["text_dim"], d_kv=16),
    }


@pytest.fixture(scope="module")
def datasets(models, ray_local, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    episodes = [
        dataclasses.replace(ep, instruction=INSTRUCTIONS[i])
        for i, ep in enumerate(make_episodes((28, 28, 28), size=SIZE))
    ]
    source = Path(write_lerobot_v3(episodes, root / "src", repo_id="tests/latents", codec="h264"))
    latents = {"codec": "wan-vae", "vae": str(models["wan"]), "geometry": "clip"}
    return {
        "stored": curate(source, root / "stored", models["umt5"], latents),
        "frames": curate(source, root / "frames", models["umt5"], None),
    }


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines if ln.strip()]


def test_shards_store_the_vae_latents_and_the_manifest_names_the_codec(datasets, models):
    from pretrain.stored_latents import latent_encoder_from_config
    from schemas.latents import LatentConfig, latents_from_bytes

    stored = json.loads((datasets["stored"] / "meta" / "manifest.json").read_text())
    plain = json.loads((datasets["frames"] / "meta" / "manifest.json").read_text())
    assert plain["latents"] is None and stored["text"]["encoder"]["kind"] == "umt5"
    entry = stored["latents"]
    assert entry["codec"] == "wan-vae" and entry["geometry"] == "clip"
    assert entry["latent_shape"] == [48, 2, SIZE // 16, SIZE // 16]  # 1 + 4/4 latent frames
    assert entry["config"]["frame_mode"] == "video"
    assert stored["counts"]["samples"] == plain["counts"]["samples"] > 0
    assert stored["stage_counts"]["latents"] == {
        "in": stored["counts"]["episodes_with_samples"],
        "out": stored["counts"]["episodes_with_samples"],
        "rejected": 0,
    }

    # every row's latents are the codec's own for its frames
    from schemas.frames import decode_sample_frames

    encoder = latent_encoder_from_config(LatentConfig(vae=str(models["wan"])))
    rows = pq.read_table(sorted((datasets["stored"] / "data").glob("*.parquet"))[0]).to_pylist()
    frames = np.stack([decode_sample_frames(r["video"], r["video_format"]) for r in rows[:3]])
    want = encoder.encode(frames)
    for r, w in zip(rows[:3], want, strict=True):
        np.testing.assert_allclose(latents_from_bytes(r["latents"], r["latent_shape"]), w, rtol=0, atol=1e-5)
    assert all(r["latents"] for r in rows)


def test_training_from_stored_latents_equals_encoding_on_the_fly_and_never_encodes(
    datasets, models, tmp_path, monkeypatch
):
    from pipelines import pretrain
    from pretrain import text_encoder
    from pretrain.codec import WanVAECodec

    # one shard each, the same rows in the same order: the batches hold the same samples
    for name in ("stored", "frames"):
        assert len(list((datasets[name] / "data").glob("*.parquet"))) == 1
    ids = {
        name: pq.read_table(datasets[name] / "data" / "shard-00000.parquet", columns=["sample_id"])
        .column(0)
        .to_pylist()
        for name in datasets
    }
    assert ids["stored"] == ids["frames"]

    calls = {"encode": 0}
    real_encode = WanVAECodec.encode

    def counting_encode(self, frames):
        calls["encode"] += 1
        return real_encode(self, frames)

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder ran during training on stored latents")

    args = [*TRAIN_ARGS, "--vae", str(models["wan"])]
    with monkeypatch.context() as spy:
        spy.setattr(WanVAECodec, "encode", refuse)
        spy.setattr(text_encoder, "text_encoder_from_config", refuse)
        spy.setattr(text_encoder.UMT5TextEncoder, "encode", refuse)
        assert pretrain.main([*args, "--data", str(datasets["stored"]), "--out", str(tmp_path / "s")]) == 0
    with monkeypatch.context() as spy:
        spy.setattr(WanVAECodec, "encode", counting_encode)
        assert pretrain.main([*args, "--data", str(datasets["frames"]), "--out", str(tmp_path / "f")]) == 0
    assert calls["encode"] >= STEPS  # on the fly: the VAE encodes every batch

    got, want = losses(tmp_path / "s"), losses(tmp_path / "f")
    assert len(got) == len(want) == STEPS
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    assert len(set(got)) == STEPS  # the runs trained (the loss moved), not a constant compared


def test_a_model_with_another_geometry_refuses_the_stored_latents(datasets, models, tmp_path, capsys):
    from pipelines import pretrain

    shard = datasets["stored"] / "data" / "shard-00000.parquet"
    argv = [*TRAIN_ARGS, "--vae", str(models["wan"]), "--data", str(datasets["stored"])]
    argv[argv.index("video_geometry=clip")] = "video_geometry=per_frame"
    assert pretrain.main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(shard) in err
    assert "geometry 'clip'" in err and "config.frame_mode: stored 'video', model 'independent'" in err
