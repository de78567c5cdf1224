"""The real GWP path end to end on CPU (issue #17, "What it must show"), with tiny random models of the
real architectures built from their libraries' own configs and saved as folders:

* a diffusers Wan2.2-TI2V-5B-shaped pipeline folder (``transformer/`` = ``WanTransformer3DModel``,
  ``vae/`` = ``AutoencoderKLWan``: 48 channels, 16× spatial, 4× temporal; ``tests/pretrain/wan_tiny.py``);
* a ``transformers`` umT5 encoder + tokenizer whose width is the Wan text embedder's ``text_dim``.

Then, through the real command-line entry points: ``gwp curate`` of a few simulated episodes (LeRobot
v3.0) with umT5 token states, K = 4 future frames so that they fill one latent frame of the Wan VAE's
4× temporal compression (GWP's one-clip geometry); ``gwp finetune --init <wan folder> --codec wan-vae
--vae <wan folder>`` for a few steps; then ``Policy.from_pretrained`` of the saved policy and
``predict_action`` in fp32 and bf16. On the loaded policy and a batch of the curated shards, the text
cross-attention's q and k get non-zero gradient, and another instruction gives other actions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.pretrain.wan_tiny import WAN22_TRANSFORMER, WAN22_VAE
from tests.support.helpers import frames_of, make_episodes, write_all_formats
from tests.support.tiny_umt5 import assert_q_and_k_learn, save_tiny_umt5

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
WORDS = ["open", "the", "drawer", "press", "button", "from", "top", "push", "puck", "to", "goal"]
INSTRUCTIONS = ("open the drawer", "press the button from the top", "open the drawer")
SIZE = 64  # px: 64 / 16 (VAE) / 2 (patch) = 2×2 tokens per latent frame
MAX_TOKENS = 8


def save_wan22(root: Path) -> Path:
    """A diffusers pipeline folder laid out as Wan-AI/Wan2.2-TI2V-5B-Diffusers (tiny, random)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(0)
    WanTransformer3DModel(**WAN22_TRANSFORMER).save_pretrained(root / "transformer")
    AutoencoderKLWan(**WAN22_VAE).save_pretrained(root / "vae")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root


def gwp(*argv: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *argv],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"gwp {argv[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}"


def clip_curation(umt5: Path) -> dict:
    """The curation settings of a GWP-geometry dataset: K = 4 future frames 2 apart (one latent
    frame of the 4× temporal VAE), SIZE² frames, umT5 token states."""
    return {
        "preset": "debug",
        "windows": {"chunk": 8, "frame_stride": 2, "num_future": 4, "stride": 4},
        "video": {"width": SIZE, "height": SIZE},
        "text": {"kind": "umt5", "name": str(umt5), "max_tokens": MAX_TOKENS},
    }


def test_curate_finetune_from_wan22_and_serve_with_umt5(tmp_path):
    from policy import Policy
    from pretrain.data import LoaderConfig, ShardLoader

    wan = save_wan22(tmp_path / "wan22")
    umt5 = save_tiny_umt5(tmp_path / "umt5", WORDS, seed=1, d_model=WAN22_TRANSFORMER["text_dim"], d_kv=16)
    episodes = [
        dataclasses.replace(ep, instruction=INSTRUCTIONS[i])
        for i, ep in enumerate(make_episodes((28, 28, 28), size=SIZE))
    ]
    source = write_all_formats(episodes, tmp_path / "src", ["lerobot_v3"])["lerobot_v3"]

    # curation: K = 4 future frames (one latent frame of the 4× temporal VAE), umT5 token states
    data = tmp_path / "shards"
    job = {
        "sources": [str(source)],
        "out": str(data),
        "curation": clip_curation(umt5),
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    gwp("curate", "--config", str(tmp_path / "job.json"), "--no-progress", cwd=tmp_path)
    manifest = json.loads((data / "meta" / "manifest.json").read_text())
    assert manifest["text"]["encoder"]["kind"] == "umt5" and manifest["text"]["dim"] == 64

    # fine-tune from the Wan folder (its VAE as codec) with the wan22-5b preset's geometry
    run = tmp_path / "run"
    gwp(
        "finetune",
        *("--preset", "debug", "--model", "wan22-5b", "--init", str(wan)),
        *("--codec", "wan-vae", "--vae", str(wan), "--data", str(data), "--out", str(run)),
        *("--steps", "3", "--batch-size", "2", "--ckpt-every", "0", "--heldout-fraction", "0"),
        "--no-progress",
        cwd=tmp_path,
    )
    final = run / "final"
    cfg = json.loads((final / "config.json").read_text())["config"]
    assert cfg["codec"] == "wan-vae" and cfg["model"]["video_geometry"] == "clip"
    assert cfg["model"]["latent_channels"] == 48 and cfg["model"]["text_dim"] == 64

    policy = Policy.from_pretrained(final)
    model = policy.model
    assert model.cfg.text.kind == "umt5"

    # q/k of the text cross-attention learn, on a real batch of the curated shards
    batch = next(iter(ShardLoader(data, LoaderConfig(batch_size=2, shuffle=False))))
    assert batch["text_states"].shape[1] > 1 and batch["text_mask"].sum(1).min() > 1
    model.train()
    assert_q_and_k_learn(model, batch)
    model.zero_grad(set_to_none=True)
    model.eval()

    ep = episodes[0]
    obs = {
        "images": {role: f[5] for role, f in frames_of(ep).items()},
        "state": ep.state[5],
        "embodiment": ep.embodiment,
        "instruction": INSTRUCTIONS[0],
    }
    a32 = policy.predict_action(obs, seed=3)
    assert a32.shape == (8, 4) and np.isfinite(a32).all()
    other = policy.predict_action({**obs, "instruction": INSTRUCTIONS[1]}, seed=3)
    assert not np.allclose(a32, other, atol=1e-4), "the instruction does not reach the actions"

    bf16 = Policy.from_pretrained(final, dtype=torch.bfloat16)
    blocks = bf16.model.transformer.blocks
    assert blocks[0].self_attn.q.weight.dtype == blocks[0].cross_attn.k.weight.dtype == torch.bfloat16
    a16 = bf16.predict_action(obs, seed=3)
    assert np.isfinite(a16).all()
    # bf16 keeps 8 mantissa bits: over the sampler's steps the actions (robot units, range [-1, 1]) stay
    # within 0.01 of fp32's, yet not identical (the bf16 path did run)
    assert not np.array_equal(a16, a32)
    np.testing.assert_allclose(a16, a32, rtol=0, atol=0.01)
    assert not np.allclose(bf16.predict_action({**obs, "instruction": INSTRUCTIONS[1]}, seed=3), a16)
