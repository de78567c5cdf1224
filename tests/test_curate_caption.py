"""The curation job's captioning actor (``EpisodeCaptioner``) on the rows of the one-pass
episode stage, with a tiny randomly initialised CoCa.

A file of its own: torch (and triton, which it imports lazily) is imported when this module
is collected, before any test has loaded the video and simulation libraries; importing triton
after those, in one process, crashed the interpreter (seen running tests/test_curate.py).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip

from curation.config import CaptionConfig, get_preset
from curation.episode_samples import EpisodeCaptioner, make_episode_fn, table_from_bytes
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.ingest import SourceSpec, discover
from tests.helpers import make_episodes
from tests.test_caption import TINY


def test_caption_actor_fills_every_sample_of_the_episode_rows(tmp_path):
    """The contract between the per-episode rows and the captioning actor of the job (called
    in-process here, on a tiny random CoCa): every sample gets a caption, a CLIP score and a
    CLIP text embedding, and the episode's record passes through untouched."""
    (tmp_path / "coca_curate_tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "coca_curate_tiny.json")
    src = write_lerobot_v3(make_episodes([40, 44], size=128), tmp_path / "src")
    refs, _ = discover(SourceSpec(str(src)))
    episode_fn = make_episode_fn(get_preset("default"))
    rows = [episode_fn({"group": 0, "ref": json.dumps(r.to_row())}) for r in refs]
    assert all(len(r["table"]) for r in rows), [json.loads(r["record"])["ledger"] for r in rows]
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    captioner = EpisodeCaptioner(CaptionConfig(model="coca_curate_tiny", pretrained=None, max_tokens=4))
    out = captioner(batch)
    assert list(out["record"]) == list(batch["record"])
    for before, after in zip(batch["table"], out["table"], strict=True):
        a, b = table_from_bytes(before).to_pylist(), table_from_bytes(after).to_pylist()
        assert [r["sample_id"] for r in a] == [r["sample_id"] for r in b]
        for r in b:
            assert isinstance(r["caption"], str) and "clip_score" in r["quality"]
            assert len(r["text_embedding"]) == TINY["embed_dim"]
