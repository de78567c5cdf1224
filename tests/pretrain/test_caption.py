"""CoCa captions and CLIP scores on a tiny randomly initialised CoCa; the hashed token encoder."""

from __future__ import annotations

import json
import socket

import numpy as np
import open_clip
import pyarrow as pa
import pytest
import torch

from curation.config import CaptionConfig
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


def test_the_caption_actor_runs_whatever_model_the_factory_builds():
    """Curation knows the caption model only through schemas.text.CaptionModel: any object with
    its two methods, built by the factory from the job's caption config, is what the job's
    caption actor (:class:`curation.episode_samples.PartCaptioner`) uses: its score and caption
    of each sample's observation frame."""
    from curation.episode_samples import RAW_SCHEMA, PartCaptioner, table_from_bytes, table_to_bytes
    from schemas.frames import encode_sample_frames

    class Fixed:
        def score_and_caption(self, images_NHWC, texts):
            return images_NHWC.mean(axis=(1, 2, 3)).astype(np.float32), [t.upper() for t in texts]

    built = []
    cfg = CaptionConfig(model="any", pretrained=None)
    imgs = images(2)
    rows = [
        {"sample_id": f"s{i}", "instruction": text, "video": encode_sample_frames(img[None], "png")}
        | {"video_format": "png", "quality": {"motion": 1.0}}
        for i, (img, text) in enumerate(zip(imgs, ["ab", "cde"], strict=True))
    ]
    part = {
        "part": 0,
        "records": json.dumps([{"episode_id": "e", "samples": 2}]),
        "sketches": json.dumps([None]),
        "table": table_to_bytes(pa.Table.from_pylist(rows, schema=RAW_SCHEMA)),
    }
    batch = {k: np.asarray([v], dtype=object) for k, v in part.items()}
    out = PartCaptioner(cfg, lambda c: built.append(c) or Fixed())(batch)
    assert built == [cfg]
    got = table_from_bytes(out["table"][0]).to_pylist()
    assert [r["caption"] for r in got] == ["AB", "CDE"]
    np.testing.assert_allclose(
        [r["quality"]["clip_score"] for r in got], imgs.mean(axis=(1, 2, 3)), rtol=1e-6
    )
    assert [r["quality"]["motion"] for r in got] == [1.0, 1.0]  # the filters' scores are kept
    assert all("text_embedding" not in r for r in got)  # instructions: once per dataset, beside the shards


def test_unavailable_weights_fail_fast_with_a_clear_message(monkeypatch):
    connections, loads = [], []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: loads.append(a))
    with pytest.raises(
        WeightsUnavailableError, match=r"coca_ViT-B-32/mscoco_finetuned_laion2b_s13b_b90k.*cache"
    ):
        captioner_from_config(CaptionConfig())
    # fast: one probe of the host, and open_clip's downloader (a minute of retries) is never reached
    assert len(connections) == 1 and loads == []


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
