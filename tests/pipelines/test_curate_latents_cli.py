"""``gwp curate --latents``: the latent stage from the command line, off by default, and its mistakes as one
line with exit status 2 (each answered before any episode is read)."""

from __future__ import annotations

import json

import pytest

from pipelines import curate
from tests.support.helpers import make_episodes, write_all_formats


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents-cli")
    return write_all_formats(make_episodes((24, 26)), root, ["lerobot_v3"])["lerobot_v3"]


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--latents-vae", "/models/wan"], "--latents-* settings need --latents CODEC"),
        (
            ["--latents", "wan-vae"],
            "latents.vae: codec 'wan-vae' needs the VAE's local folder or Hub repo id",
        ),
        (
            ["--latents", "wan-vae", "--latents-vae", "./no/such/vae"],
            "--latents-vae ./no/such/vae: no such folder",
        ),
        (["--latents", "pixel"], "needs a video VAE with 4× temporal compression"),  # pixel + clip geometry
        (
            ["--latents", "pixel", "--latents-geometry", "per_frame", "--latents-patch", "5"],
            "not divisible by",
        ),
    ],
)
def test_a_latents_mistake_is_one_line_and_exit_2(source, tmp_path, capsys, flags, says):
    argv = ["--source", str(source), "--out", str(tmp_path / "out"), "--preset", "debug", "--no-progress"]
    assert curate.main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gwp curate: error: ") and says in err
    assert not (tmp_path / "out" / "data").exists()  # refused before any shard


def test_the_stage_is_opt_in_and_stores_the_codecs_latents(source, tmp_path, ray_local):
    base = ["--source", str(source), "--preset", "debug", "--no-progress"]
    assert curate.main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "meta" / "manifest.json").read_text())["latents"] is None
    flags = ["--latents", "pixel", "--latents-geometry", "per_frame", "--latent-actors", "1"]
    assert curate.main([*base, "--out", str(tmp_path / "lat"), *flags]) == 0
    manifest = json.loads((tmp_path / "lat" / "meta" / "manifest.json").read_text())
    assert manifest["latents"]["codec"] == "pixel" and manifest["latents"]["latent_shape"] == [48, 3, 16, 16]
    assert manifest["config"]["latents"]["geometry"] == "per_frame"
    plain = json.loads((tmp_path / "plain" / "meta" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == plain["counts"]["samples"] > 0
