"""Instruction embeddings: the hashed fallback that needs no model, and the interface of the one that does.

:func:`text_embedding_fallback` is torch-free and cheap to import in every Ray worker; curation
stores it when captioning is off and the policy recomputes it at inference. The CLIP text encoder
is the model's (``pretrain/text_encoder.py``); curation reaches it only through
:class:`CaptionModel`, built in each worker by a :data:`CaptionModelFactory` that the driver passes
in (a picklable function of the job's caption config, never a live model).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class CaptionModel(Protocol):
    """Captions, CLIP scores and text embeddings for curation's caption stage."""

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings ``[N, E]`` float32."""
        ...

    def score_and_caption(self, images_NHWC: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """CLIP score ``[N]`` of each uint8 image with its text, and one caption per image."""
        ...


# called once per Ray actor with the job's CaptionConfig
CaptionModelFactory = Callable[[Any], CaptionModel]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_embedding_fallback(texts: list[str], dim: int = 64) -> np.ndarray:
    """Deterministic hashed bag-of-words embedding for runs with captioning disabled."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            out[i, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    return l2_normalize(out).astype(np.float32)
