"""Instruction embeddings that need no model (torch-free, cheap to import in every Ray worker)."""

from __future__ import annotations

import hashlib

import numpy as np


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
