"""umT5 text conditioning (issue #17, finding 1), on a tiny random ``transformers`` umT5 encoder
and a word-level tokenizer, both built in the test (nothing downloaded) and loaded by path:

* the encoder gives token states and a mask, the same as the model run by hand;
* curation stores one state sequence per unique instruction beside the shards, with the encoder's
  identity in the manifest; the loader looks each sample's instruction up; a changed or missing
  file is refused naming it;
* through the real training path (loader batch → policy loss), cross-attention's q and k get
  gradient (a pooled single token gave them none: softmax over one key is constant);
* the policy encodes each instruction once (cached), and another instruction gives other actions;
* weights that cannot be had fail at start-up with a clear message (and exit 2 on the CLI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.in_memory import curate_in_memory
from policy import Policy
from policy.model import GWPPolicyModel, PolicyConfig, text_config_from_manifest
from pretrain.config import get_model_config
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.text_encoder import UMT5TextEncoder, text_encoder_from_config
from schemas import SchemaError, get_embodiment
from schemas.text import TextEncoderConfig, WeightsUnavailableError
from tests.pretrain.wan_tiny import WAN22_TRANSFORMER
from tests.support.helpers import make_episodes
from tests.support.tiny_umt5 import assert_q_and_k_learn, save_tiny_umt5

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["open", "the", "drawer", "push", "puck", "to", "goal", "press", "button", "from", "top", "red", "a"]
D_MODEL = 32
INSTRUCTIONS = ("open the drawer", "push the red puck to the goal", "open the drawer")


@pytest.fixture(scope="module")
def umt5(tmp_path_factory) -> TextEncoderConfig:
    folder = save_tiny_umt5(
        tmp_path_factory.mktemp("umt5") / "tiny-umt5",
        WORDS,
        d_model=D_MODEL,
        d_kv=8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    return TextEncoderConfig(kind="umt5", name=str(folder), max_tokens=8)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, umt5) -> Path:
    episodes = [
        dataclasses.replace(ep, instruction=INSTRUCTIONS[i])
        for i, ep in enumerate(make_episodes((24, 24, 24)))
    ]
    out = tmp_path_factory.mktemp("curated") / "ds"
    return curate_in_memory(episodes, out, text=umt5, text_encoder=text_encoder_from_config)


def test_umt5_states_come_from_the_model_by_path_and_from_a_diffusers_layout(umt5, tmp_path):
    from transformers import AutoTokenizer, UMT5EncoderModel

    enc = UMT5TextEncoder(umt5)
    assert enc.identity == {
        "kind": "umt5",
        "name": umt5.name,
        "subfolder": "",
        "dim": D_MODEL,
        "max_tokens": 8,
    }
    texts = ["open the drawer", "push", " ".join(WORDS)]
    states, mask = enc.encode(texts)
    assert states.shape == (3, 8, D_MODEL) and mask.dtype == bool
    assert mask.sum(axis=1).tolist() == [4, 2, 8]  # words + </s>; the long one cut to max_tokens
    assert not states[~mask].any()  # padded positions are zero, as Wan's pipeline leaves them
    model = UMT5EncoderModel.from_pretrained(umt5.name).eval()
    tok = AutoTokenizer.from_pretrained(umt5.name)
    for i, text in enumerate(texts[:2]):  # each text alone, no padding: the reference
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = model(input_ids=ids).last_hidden_state[0].numpy()
        np.testing.assert_allclose(states[i, : len(want)], want, atol=1e-5)

    # a diffusers Wan folder: text_encoder/ and tokenizer/ side by side
    wan = tmp_path / "wan"
    model.save_pretrained(wan / "text_encoder")
    tok.save_pretrained(wan / "tokenizer")
    other = UMT5TextEncoder(dataclasses.replace(umt5, name=str(wan), subfolder="text_encoder"))
    np.testing.assert_allclose(other.encode(texts)[0], states, atol=1e-6)


def test_curation_stores_each_instruction_once_and_the_loader_looks_it_up(curated, umt5):
    manifest = json.loads((curated / "meta" / "manifest.json").read_text())
    text = manifest["text"]
    assert text["instructions"] == sorted(set(INSTRUCTIONS))  # unique: 2 for 3 episodes
    assert text["encoder"]["kind"] == "umt5" and text["encoder"]["name"] == umt5.name
    assert text["dim"] == D_MODEL and manifest["config"]["curation"]["text"]["kind"] == "umt5"
    assert (curated / text["file"]).is_file()
    # published with the shards, and the dataset card says which encoder
    from curation.publish import dataset_files

    files = dataset_files(curated)
    assert text["file"] in files
    card = files["README.md"].decode()
    assert f"`umt5` text encoder `{umt5.name}`" in card and "2 unique instructions" in card

    want = {t: UMT5TextEncoder(umt5).encode([t]) for t in set(INSTRUCTIONS)}
    loader = ShardLoader(curated, LoaderConfig(batch_size=4, shuffle=False, drop_last=False), epochs=1)
    seen = 0
    for batch in loader:
        assert batch["text_states"].shape[:2] == batch["text_mask"].shape
        for j, instruction in enumerate(batch["instruction"]):
            states, mask = want[instruction]
            n = int(mask.sum())
            assert batch["text_mask"][j].sum() == n
            np.testing.assert_allclose(batch["text_states"][j, :n].numpy(), states[0, :n], atol=1e-5)
            seen += 1
    assert seen == manifest["counts"]["samples"] > len(INSTRUCTIONS)


def test_a_changed_or_missing_text_file_is_refused_naming_it(curated, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(curated, copy)
    path = copy / "meta" / "text_embeddings.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SchemaError, match=r"text_embeddings\.safetensors.*sha256"):
        ShardSet.open(copy)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"text_embeddings\.safetensors.*missing"):
        ShardSet.open(copy)


def _policy(curated: Path) -> GWPPolicyModel:
    shards = ShardSet.open(curated)
    mcfg = dataclasses.replace(get_model_config("debug"), chunk=8, num_future=2)
    torch.manual_seed(0)
    model = GWPPolicyModel(
        PolicyConfig(
            model=mcfg,
            text=text_config_from_manifest(shards.manifest.text, "manifest"),
            embodiments=(get_embodiment("metaworld_sawyer"),),
        )
    )
    model.norm_stats = dict(shards.manifest.stats)
    return model


def test_cross_attention_q_and_k_learn_from_a_loader_batch(curated):
    """Fails on the pooled single-token text: with one key, softmax is 1 whatever q·k, so q and k
    (and their norms) get no gradient in any layer; here the instruction is a token sequence."""
    model = _policy(curated)
    batch = next(iter(ShardLoader(curated, LoaderConfig(batch_size=4, shuffle=False))))
    assert batch["text_states"].shape[1] > 1
    assert_q_and_k_learn(model, batch)

    # the mechanism: the same batch cut to one text token leaves q and k without gradient
    model.zero_grad()
    one = {**batch, "text_states": batch["text_states"][:, :1], "text_mask": batch["text_mask"][:, :1]}
    model.joint_loss(one, generator=torch.Generator().manual_seed(0))[0].backward()
    ca = model.transformer.blocks[0].cross_attn
    assert ca.q.weight.grad.norm() < 1e-6 * ca.v.weight.grad.norm()


def test_the_policy_caches_each_instruction_and_follows_it(curated, tmp_path):
    from tests.support.helpers import frames_of

    policy = Policy(_policy(curated))
    calls = []
    encode = policy.text_encoder.encode
    policy.text_encoder.encode = lambda texts: calls.append(list(texts)) or encode(texts)
    ep = make_episodes((24,))[0]
    obs = {
        "images": {role: f[3] for role, f in frames_of(ep).items()},
        "state": ep.state[3],
        "embodiment": ep.embodiment,
    }
    a = policy.predict_action({**obs, "instruction": "open the drawer"}, seed=1)
    again = policy.predict_action({**obs, "instruction": "open the drawer"}, seed=1)
    b = policy.predict_action({**obs, "instruction": "push the red puck to the goal"}, seed=1)
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, b, atol=1e-4)  # the instruction reaches the actions
    assert calls == [["open the drawer"], ["push the red puck to the goal"]]  # once per instruction

    # two instructions of different lengths in one batch (masked padding) = one at a time
    both = policy.predict_action_batch(
        [{**obs, "instruction": "open the drawer"}, {**obs, "instruction": "push the red puck to the goal"}],
        [1, 1],
    )
    np.testing.assert_allclose(both[0], a, atol=1e-5)
    np.testing.assert_allclose(both[1], b, atol=1e-5)

    # the encoder's identity travels with the saved policy
    folder = policy.model.save_pretrained(tmp_path / "policy")
    loaded = Policy.from_pretrained(folder)
    assert loaded.model.cfg.text == policy.model.cfg.text
    np.testing.assert_array_equal(loaded.predict_action({**obs, "instruction": "open the drawer"}, seed=1), a)

    # a policy trained on the old pooled single-token text is refused, saying why
    cfg = folder / "config.json"
    meta = json.loads(cfg.read_text())
    meta["config"]["text"] = {"kind": "fallback", "dim": 64, "model": None, "pretrained": None, "seed": 0}
    cfg.write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"kind 'fallback' is the pooled single-token text.*fine-tuned again"
    ):
        Policy.from_pretrained(folder)


def test_umt5_weights_that_cannot_be_had_fail_at_start_up(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = TextEncoderConfig(kind="umt5", name="nobody/umt5-missing")
    with pytest.raises(WeightsUnavailableError, match=r"nobody/umt5-missing.*HF_HUB_OFFLINE.*local folder"):
        text_encoder_from_config(cfg)

    # on the command line: one line on stderr, exit 2, before any episode is read
    job = tmp_path / "job.json"
    source = tmp_path / "src"
    source.mkdir()
    job.write_text(
        json.dumps(
            {
                "sources": [str(source)],
                "out": str(tmp_path / "out"),
                "curation": {"preset": "debug", "text": {"kind": "umt5", "name": "nobody/umt5-missing"}},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "curate", "--config", str(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nobody/umt5-missing" in lines[0] and lines[0].startswith("gwp curate: error:")


def test_wan_text_embedder_takes_umt5_states_unchanged(umt5):
    """Wan's text embedder (diffusers ``condition_embedder.text_embedder``, text_dim → dim MLP) maps
    to ``text_in`` one to one and reads the umT5 states as they come (here 32-d, 4096-d for XXL)."""
    from diffusers import WanTransformer3DModel

    from pretrain.model import build_model
    from pretrain.wan_adapter import load_wan_backbone, model_config_from_wan

    torch.manual_seed(0)
    tiny = {"in_channels": 8, "out_channels": 8, "text_dim": D_MODEL, "ffn_dim": 40, "num_layers": 1}
    wan = WanTransformer3DModel(**{**WAN22_TRANSFORMER, **tiny}).eval()
    ours = build_model(model_config_from_wan(dict(wan.config), get_model_config("debug"))).eval()
    load_wan_backbone(ours, wan.state_dict())
    states, _ = UMT5TextEncoder(umt5).encode(["open the drawer", "push the red puck to the goal"])
    x = torch.from_numpy(states)
    with torch.no_grad():
        torch.testing.assert_close(ours.text_in(x), wan.condition_embedder.text_embedder(x), rtol=0, atol=0)
    five_b = build_model(get_model_config("wan22-5b"), "meta")
    assert tuple(five_b.text_in.fc1.weight.shape) == (3072, 4096)  # umT5-XXL's d_model, no padding
