"""Instruction text: the text-encoder interface, the cheap encoder that needs no model, and the
caption-model interface.

An instruction enters the model as a *sequence* of token states with a padding mask, as Wan's
cross-attention was trained on umT5 token states; a single pooled vector would make
cross-attention a constant (one key: softmax is 1 for every query) and leave its q/k untrained.

* :class:`TextEncoder` is what curation and the policy call: ``encode(texts)`` →
  ``(states [N, L, E] float32, mask [N, L] bool)``, L ≤ ``max_tokens``; row i's valid tokens
  come first and padded positions are zero. ``identity`` names the encoder, so data embedded by
  one encoder is never read as another's.
* :class:`TextEncoderConfig` chooses it: ``hashed`` (:class:`HashedTokenEncoder`, torch-free,
  for the CPU presets and tests) or ``umt5`` (``transformers``' umT5 encoder, the model's own:
  ``pretrain/text_encoder.py``). Curation receives a :data:`TextEncoderFactory` from its driver,
  so it never imports a model.
* :class:`CaptionModel` is the caption stage's model (CoCa captions and CLIP scores).
"""

from __future__ import annotations

import hashlib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from schemas.errors import ConfigError

TextEncoderKind = Literal["hashed", "umt5"]
TEXT_ENCODER_KINDS: tuple[str, ...] = typing.get_args(TextEncoderKind)
END_TOKEN = "</s>"  # closes every hashed sequence, as T5's tokenizer does: no instruction has zero tokens


class WeightsUnavailableError(RuntimeError):
    """A text model's weights are neither local nor downloadable from here: raised at start-up."""


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder embeds instructions (curation's ``text`` section, the policy's ``text``)."""

    kind: TextEncoderKind = "hashed"
    # umt5: a Hub repo id or local folder of a transformers umT5 model (config.json + weights +
    # tokenizer), or of a diffusers Wan pipeline with subfolder "text_encoder" (its tokenizer is
    # then read from the sibling "tokenizer")
    name: str = ""
    subfolder: str = ""
    dim: int = 64  # hashed: the token-state width E (umt5: the model's d_model, recorded after loading)
    max_tokens: int = 64  # L at most (GWP: up to 64 prompt tokens)

    def __post_init__(self) -> None:
        w = "TextEncoderConfig"
        if self.kind not in TEXT_ENCODER_KINDS:
            raise ConfigError(w, "kind", f"must be one of {list(TEXT_ENCODER_KINDS)}, got {self.kind!r}")
        for name in ("dim", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(w, name, f"must be >= 1, got {getattr(self, name)}")
        if self.kind == "umt5" and not self.name:
            raise ConfigError(w, "name", "kind 'umt5' needs a Hub repo id or a local folder")


class TextEncoder(Protocol):
    """Token states of instructions (see the module docstring for shapes)."""

    @property
    def identity(self) -> dict[str, Any]:
        """``{"kind", "name", "subfolder", "dim", "max_tokens"}``: recorded with the stored states."""
        ...

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


# called once by curation's driver (and by the policy) with a TextEncoderConfig
TextEncoderFactory = Callable[[TextEncoderConfig], TextEncoder]


def pad_token_batch(seqs: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-text ``[L_i, E]`` states → ``([N, max L_i, E], [N, max L_i] bool)``, zero-padded."""
    L = max((len(s) for s in seqs), default=0)
    states = np.zeros((len(seqs), L, dim), np.float32)
    mask = np.zeros((len(seqs), L), bool)
    for i, s in enumerate(seqs):
        states[i, : len(s)] = s
        mask[i, : len(s)] = True
    return states, mask


class HashedTokenEncoder:
    """Torch-free word tokens: each lower-cased word (then an end token) is a fixed unit vector drawn
    from a generator seeded by the word's SHA-256, so it needs no weights and no training, and
    two instructions differ wherever their words differ. A position's word order is kept by
    the sequence itself (cross-attention sees every token)."""

    def __init__(self, cfg: TextEncoderConfig):
        if cfg.kind != "hashed":
            raise ValueError(f"HashedTokenEncoder: config kind is {cfg.kind!r}")
        self.cfg = cfg

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "kind": "hashed",
            "name": "",
            "subfolder": "",
            "dim": self.cfg.dim,
            "max_tokens": self.cfg.max_tokens,
        }

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.cfg.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        seqs = []
        for text in texts:
            words = [*re.findall(r"\w+|[^\w\s]", text.lower())[: self.cfg.max_tokens - 1], END_TOKEN]
            seqs.append(np.stack([self._word(w) for w in words]))
        return pad_token_batch(seqs, self.cfg.dim)


class CaptionModel(Protocol):
    """Captions and CLIP scores for curation's caption stage."""

    def score_and_caption(self, images_NHWC: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list[str]]:
        """CLIP score ``[N]`` of each uint8 image with its text, and one caption per image."""
        ...


# called once per Ray actor with the job's CaptionConfig
CaptionModelFactory = Callable[[Any], CaptionModel]
