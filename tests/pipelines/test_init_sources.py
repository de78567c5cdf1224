"""``gwp finetune --init`` accepts a diffusers Wan2.2 folder, a pipeline folder or a Hub repo id of
one, and refuses Wan weights with the pixel codec (issue #17, finding 6).

The Wan models are tiny random ones built from diffusers' own classes with Wan2.2-TI2V-5B's
layout (48 latent channels, transformer patch (1, 2, 2); VAE 16× spatial, 4× temporal) and
saved with ``save_pretrained`` as the Wan2.2-TI2V-5B-Diffusers repo is laid out
(``transformer/``, ``vae/``, ``model_index.json``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from curation.in_memory import curate_in_memory
from pipelines import finetune
from pretrain import init as init_mod
from pretrain.init import INIT_FILES, resolve_init
from tests.pretrain.wan_tiny import WAN22_TRANSFORMER, WAN22_VAE
from tests.support.helpers import make_episodes


@pytest.fixture(scope="module")
def wan_pipeline(tmp_path_factory) -> tuple[Path, dict]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    root = tmp_path_factory.mktemp("wan22")
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**WAN22_TRANSFORMER)
    wan.save_pretrained(root / "transformer")
    AutoencoderKLWan(**WAN22_VAE).save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root, {k: v.detach().clone() for k, v in wan.state_dict().items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return curate_in_memory(make_episodes((20, 24), size=64), tmp_path_factory.mktemp("shards") / "d")


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = finetune.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()


def test_resolve_init_tells_the_kinds_apart(wan_pipeline, tmp_path):
    root, _ = wan_pipeline
    assert resolve_init(root).kind == "wan" and resolve_init(root).folder == root / "transformer"
    assert resolve_init(root / "transformer").kind == "wan"
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text("{}")
    assert resolve_init(ours).kind == "gwp"


def test_a_hub_repo_id_downloads_what_a_wan_pipeline_needs(wan_pipeline, monkeypatch):
    root, _ = wan_pipeline
    asked = {}

    def fake_download(repo_id, *, repo_type, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, repo_type=repo_type, revision=revision)
        # what snapshot_download would fetch from a repo laid out like root: the patterns' matches
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        asked["files"] = sorted(f for f in files if any(fnmatch.fnmatch(f, pat) for pat in allow_patterns))
        return root

    monkeypatch.setattr(init_mod, "download_snapshot", fake_download)
    src = resolve_init("Wan-AI/Wan2.2-TI2V-5B-Diffusers", revision="main")
    assert src.kind == "wan" and asked["repo_type"] == "model" and asked["revision"] == "main"
    assert "transformer/config.json" in asked["files"]
    assert any(f.startswith("transformer/") and f.endswith(".safetensors") for f in asked["files"])
    assert not any(f.startswith("vae/") for f in asked["files"])  # the VAE comes through --vae
    assert "transformer/config.json" in INIT_FILES


def test_finetune_init_from_a_diffusers_wan22_folder(wan_pipeline, data, tmp_path, capsys):
    root, wan_sd = wan_pipeline
    out = tmp_path / "run"
    common = ["--preset", "debug", "--init", str(root), "--data", str(data), "--out", str(out)]
    # Wan weights with the pixel codec (48 channels too): refused with what to use instead
    code, err = _run(common, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "use --codec wan-vae --vae" in err, err
    argv = [*common, "--codec", "wan-vae", "--vae", str(root), "--steps", "2", "--batch-size", "2"]
    argv += [
        "--lr",
        "1e-9",
        "--ema-decay",
        "0",
        "--ckpt-every",
        "0",
        "--heldout-fraction",
        "0",
        "--no-progress",
    ]
    code, err = _run(argv, capsys)
    assert code == 0, err
    final = out / "final"
    cfg = json.loads((final / "config.json").read_text())["config"]
    assert cfg["codec"] == "wan-vae" and cfg["model"]["latent_channels"] == 48
    weights = load_file(str(final / "model.safetensors"))
    # two steps at lr 1e-9: the backbone is still Wan's
    torch.testing.assert_close(
        weights["transformer.video_in.weight"], wan_sd["patch_embedding.weight"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        weights["transformer.blocks.1.ffn.2.weight"], wan_sd["blocks.1.ffn.net.2.weight"], atol=1e-6, rtol=0
    )


def test_pretrain_init_from_our_checkpoint(tmp_path):
    from dataclasses import replace

    from safetensors.torch import save_file

    from pipelines.pretrain import build_transformer
    from pretrain.config import get_model_config
    from pretrain.model import build_model

    torch.manual_seed(5)
    cfg = replace(get_model_config("debug"), chunk=8, num_future=2)
    ours = build_model(cfg)
    (tmp_path / "ckpt").mkdir()
    save_file(
        {k: v.contiguous() for k, v in ours.state_dict().items()},
        str(tmp_path / "ckpt" / "model.safetensors"),
    )
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    model, record = build_transformer(replace(cfg, chunk=16), str(tmp_path / "ckpt"), "pixel")
    assert record["kind"] == "gwp" and record["loaded"] == len(ours.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.state_dict().items())
    with pytest.raises(ValueError, match="geometry differs"):
        build_transformer(replace(cfg, ffn_dim=64), str(tmp_path / "ckpt"), "pixel")
