"""Training on stored latents (pretrain/stored_latents.py, the loader's ``latents`` column): the codec is
never called, the result equals encoding the frames, and latents of another codec are refused.

Data: the deterministic simulated episodes, curated in one process (``curate_in_memory``) twice, with
and without stored latents of the 4×4 pixel-patch codec (per-frame geometry, the debug preset's). The
pixel codec is an exact reshape, so the stored latents equal the on-the-fly ones bit for bit and the
two pretraining runs must give identical losses (the tiny Wan VAE's version, with its tolerance, is
tests/e2e/test_stored_latents.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.in_memory import curate_in_memory
from pretrain.codec import PixelPatchCodec
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.stored_latents import check_stored_latents, latent_encoder_from_config
from schemas.latents import LatentConfig
from tests.support.helpers import make_episodes

LENGTHS = (24, 30, 20)
PIXEL = LatentConfig(codec="pixel", patch=4, geometry="per_frame")
ARGS = ["--preset", "debug", "--steps", "4", "--batch-size", "2", "--ckpt-every", "0"]
ARGS += ["--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stored")
    episodes = make_episodes(LENGTHS, size=64)
    return {
        "stored": curate_in_memory(
            episodes, root / "stored", latents=PIXEL, latent_encoder=latent_encoder_from_config
        ),
        "frames": curate_in_memory(episodes, root / "frames"),
    }


def refuse(*args, **kwargs):
    raise AssertionError("the codec ran on a dataset that stores latents")


def test_the_loader_hands_out_the_stored_latents_and_they_are_the_codecs(data):
    shards = ShardSet.open(data["stored"])
    assert shards.latents["key"] == PixelPatchCodec(4).cache_key()
    assert check_stored_latents(shards, PixelPatchCodec(4), "per_frame") is True
    assert check_stored_latents(ShardSet.open(data["frames"]), PixelPatchCodec(4), "per_frame") is False
    both = next(iter(ShardLoader(shards, LoaderConfig(batch_size=4, shuffle=False))))
    only = next(iter(ShardLoader(shards, LoaderConfig(batch_size=4, shuffle=False, load_frames=False))))
    assert "obs_frames" not in only and torch.equal(only["obs_latents"], both["obs_latents"])
    frames = torch.cat([both["obs_frames"][:, :, None], both["future_frames"]], 2)
    stored = torch.cat([both["obs_latents"], both["future_latents"]], 2)
    assert stored.shape == (4, 48, 3, 16, 16)
    assert torch.equal(stored, PixelPatchCodec(4).encode(frames))


def test_pretraining_on_stored_latents_never_encodes_and_equals_encoding_the_frames(
    data, tmp_path, monkeypatch
):
    from pipelines import pretrain

    with monkeypatch.context() as spy:
        spy.setattr(PixelPatchCodec, "encode", refuse)
        assert pretrain.main([*ARGS, "--data", str(data["stored"]), "--out", str(tmp_path / "s")]) == 0
    assert pretrain.main([*ARGS, "--data", str(data["frames"]), "--out", str(tmp_path / "f")]) == 0

    def losses(run: Path) -> list[float]:
        return [
            json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()
        ]

    got, want = losses(tmp_path / "s"), losses(tmp_path / "f")
    assert len(got) == 4 and got == want  # the pixel codec is exact: the same bits either way


def test_fine_tuning_on_stored_latents_never_encodes(data, tmp_path, monkeypatch):
    from pipelines import finetune

    argv = [
        "--preset",
        "debug",
        "--init",
        "none",
        "--data",
        str(data["stored"]),
        "--out",
        str(tmp_path / "p"),
    ]
    argv += ["--steps", "2", "--batch-size", "2", "--ckpt-every", "0", "--heldout-fraction", "0"]
    with monkeypatch.context() as spy:
        spy.setattr(PixelPatchCodec, "encode", refuse)
        assert finetune.main([*argv, "--no-progress", "--threads", "1"]) == 0
    steps = (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 2 and (tmp_path / "p" / "final").is_dir()


def test_latents_of_another_codec_or_shape_are_refused_naming_the_shard(data, tmp_path, capsys):
    from pipelines import pretrain

    shard = data["stored"] / "data" / "shard-00000.parquet"
    with pytest.raises(ValueError, match=r"differ in config\.patch: stored 4, model 2") as err:
        check_stored_latents(ShardSet.open(data["stored"]), PixelPatchCodec(2), "per_frame")
    assert str(err.value).startswith(f"{shard}: its stored latents were made by codec 'pixel-")
    # on the command line: one line, exit 2
    argv = [*ARGS, "--codec-patch", "2"]
    assert pretrain.main([*argv, "--data", str(data["stored"]), "--out", str(tmp_path / "x")]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and str(shard) in line and "config.patch: stored 4, model 2" in line

    # the manifest says one codec, a shard holds latents of another shape: that shard is named
    copy = Path(shutil.copytree(data["stored"], tmp_path / "copy"))
    table = pq.read_table(copy / "data" / "shard-00000.parquet")
    field = table.schema.field("latent_shape")
    wrong = pa.array([[48, 3, 8, 32]] * table.num_rows, type=field.type)
    table = table.set_column(table.schema.get_field_index("latent_shape"), field, wrong)
    pq.write_table(table, copy / "data" / "shard-00000.parquet")
    with pytest.raises(
        ValueError, match=r"copy/data/shard-00000.parquet: stored latents have shape \[48, 3, 8, 32\]"
    ):
        check_stored_latents(ShardSet.open(copy), PixelPatchCodec(4), "per_frame")


def test_the_dataset_card_says_which_codec_made_the_stored_latents(data):
    from curation.publish import render_dataset_card
    from pretrain.data import MANIFEST_FILE, SHARD_GLOB
    from schemas import Manifest

    for name, says in (("stored", True), ("frames", False)):
        manifest = Manifest.from_json((data[name] / MANIFEST_FILE).read_text())
        card = render_dataset_card(data[name], manifest, SHARD_GLOB, "me/data")
        line = f"made by the `pixel` codec in the `per_frame` video geometry (codec key `{PixelPatchCodec(4).cache_key()}`)"
        assert (line in card) is says
