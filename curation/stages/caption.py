"""Captions and CLIP scores as a Ray Data stage (ARCHITECTURE.md, "Curation stages").

The model is not curation's: :class:`CaptionStage` gets a :data:`schemas.text.CaptionModelFactory`
(the driver passes ``pretrain.text_encoder.captioner_from_config``) and builds the model once per
actor. Runs in an actor pool over Arrow batches, with fractional CPUs so that the read tasks keep
running on a 2-core machine.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curation.config import CaptionConfig
from schemas.text import CaptionModelFactory


class CaptionStage:
    """Ray Data callable class: adds ``caption`` and ``clip_score`` columns
    (instructions are embedded once per dataset, not per sample: ``curation/text_embeddings.py``).

    Input batch columns: ``obs_frame`` (PNG bytes of the composed observation frame) and
    ``instruction``. Runs in an actor pool: the model loads once per actor.
    """

    def __init__(self, cfg: CaptionConfig, make_model: CaptionModelFactory):
        self.captioner = make_model(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in batch["obs_frame"]])
        texts = [str(t) for t in batch["instruction"]]
        scores, captions = self.captioner.score_and_caption(images, texts)
        out = dict(batch)
        out["clip_score"] = scores
        out["caption"] = np.asarray(captions, dtype=object)
        return out
