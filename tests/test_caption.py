"""CoCa captions and CLIP scores on a tiny randomly initialised CoCa; the hashed token encoder."""

from __future__ import annotations

import io
import json
import socket
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from curation.config import CaptionConfig
from curation.stages.caption import CaptionStage
from pretrain.text_encoder import WeightsUnavailableError, captioner_from_config
from schemas.text import HashedTokenEncoder, TextEncoderConfig

TINY = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "layers": 2,
        "width": 64,
        "patch_size": 16,
        "attentional_pool": True,
        "attn_pooler_heads": 4,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": 64,
        "heads": 4,
        "layers": 2,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {
        "context_length": 76,
        "vocab_size": 49408,
        "width": 64,
        "heads": 4,
        "layers": 2,
        "attn_pooler_heads": 4,
    },
    "custom_text": True,
}


@pytest.fixture(scope="module")
def tiny_coca(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "coca_test_tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    return "coca_test_tiny"


@pytest.fixture(scope="module")
def captioner(tiny_coca):
    return captioner_from_config(CaptionConfig(model=tiny_coca, pretrained=None, max_tokens=6))


def images(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 72, 96, 3), dtype=np.uint8)


def test_scores_captions_and_embeddings(captioner):
    texts = ["open the drawer", "push the puck", "open the drawer"]
    scores, captions = captioner.score_and_caption(images(), texts)
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)  # cosine similarities
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    emb = captioner.embed_text(texts)
    assert emb.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])
    assert not np.allclose(emb[0], emb[1])
    # the score is the cosine of the image and text embeddings
    with torch.no_grad():
        img = captioner.model.encode_image(captioner._pixels(images()[:1]), normalize=True)[0].numpy()
    np.testing.assert_allclose(scores[0], img @ emb[0], rtol=1e-4, atol=1e-5)


def test_greedy_decoding_is_deterministic_and_bounded(captioner):
    a = captioner.score_and_caption(images(2, seed=1), ["a", "b"])[1]
    b = captioner.score_and_caption(images(2, seed=1), ["a", "b"])[1]
    assert a == b
    # at most max_tokens tokens per caption
    assert all(len(captioner.tokenizer.encode(c)) <= captioner.cfg.max_tokens for c in a)


def test_local_checkpoint_loads_the_same_weights(captioner, tiny_coca, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": captioner.model.state_dict()}, ckpt)
    other = captioner_from_config(
        CaptionConfig(model=tiny_coca, pretrained=str(ckpt), seed=123, max_tokens=6)
    )
    texts = ["stack the blocks"]
    np.testing.assert_array_equal(other.embed_text(texts), captioner.embed_text(texts))
    assert other.score_and_caption(images(1), texts)[1] == captioner.score_and_caption(images(1), texts)[1]


def test_stage_adds_columns(tiny_coca):
    stage = CaptionStage(CaptionConfig(model=tiny_coca, pretrained=None, max_tokens=4), captioner_from_config)
    frames = []
    for img in images(2):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        frames.append(buf.getvalue())
    out = stage({"obs_frame": np.asarray(frames, dtype=object), "instruction": np.asarray(["x", "y"])})
    assert set(out) >= {"caption", "clip_score", "obs_frame"}
    assert len(out["caption"]) == 2 and out["clip_score"].shape == (2,)
    assert "text_embedding" not in out  # instructions are embedded once per dataset, beside the shards


def test_the_stage_runs_whatever_model_the_factory_builds():
    """Curation knows the caption model only through schemas.text.CaptionModel: any object with
    its two methods, built by the factory from the stage's config, is what the stage uses."""

    class Fixed:
        def score_and_caption(self, images_NHWC, texts):
            return images_NHWC.mean(axis=(1, 2, 3)).astype(np.float32), [t.upper() for t in texts]

    built = []
    cfg = CaptionConfig(model="any", pretrained=None)
    stage = CaptionStage(cfg, lambda c: built.append(c) or Fixed())
    imgs = images(2)
    frames = []
    for img in imgs:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        frames.append(buf.getvalue())
    out = stage({"obs_frame": np.asarray(frames, dtype=object), "instruction": np.asarray(["ab", "cde"])})
    assert built == [cfg]
    assert out["caption"].tolist() == ["AB", "CDE"]
    np.testing.assert_allclose(out["clip_score"], imgs.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_unavailable_weights_fail_fast_with_a_clear_message(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(
        WeightsUnavailableError, match=r"coca_ViT-B-32/mscoco_finetuned_laion2b_s13b_b90k.*cache"
    ):
        captioner_from_config(CaptionConfig())
    assert time.monotonic() - start < 30


def test_unknown_model_and_tag():
    with pytest.raises(ValueError, match="unknown open_clip model 'coca_vit-b-32'"):
        captioner_from_config(CaptionConfig(model="coca_vit-b-32"))
    with pytest.raises(ValueError, match="no pretrained tag 'laion9'"):
        captioner_from_config(CaptionConfig(pretrained="laion9"))


def test_loading_the_captioner_leaves_the_global_rng_alone(tiny_coca):
    """Its random initialisation is seeded (the same weights every time) without reseeding the
    caller's global torch RNG, which a training or inference process draws its noise from."""
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    cfg = CaptionConfig(model=tiny_coca, pretrained=None, captions=False, seed=5)
    first = captioner_from_config(cfg)
    assert torch.equal(torch.rand(4), want)
    again = captioner_from_config(cfg)
    np.testing.assert_array_equal(
        first.embed_text(["open the drawer"]), again.embed_text(["open the drawer"])
    )


def test_hashed_tokens_separate_instructions_word_by_word():
    enc = HashedTokenEncoder(TextEncoderConfig(dim=16, max_tokens=5))
    states, mask = enc.encode(["Open the drawer", "push", "open the drawer!", "a b c d e f"])
    assert states.shape == (4, 5, 16) and states.dtype == np.float32
    # words, then the end token; cut to max_tokens; padded positions are zero and masked out
    assert mask.sum(axis=1).tolist() == [4, 2, 5, 5]
    assert not states[1, 2:].any()
    np.testing.assert_array_equal(states[0, :3], states[2, :3])  # case does not matter
    assert not np.allclose(states[0, 3], states[2, 3])  # "!" is a token of its own, not the end
    np.testing.assert_array_equal(states[0, 3], states[1, 1])  # the shared end token
    assert not np.allclose(states[0, 0], states[1, 0])
    np.testing.assert_allclose(np.linalg.norm(states[mask], axis=-1), 1.0, rtol=1e-5)
