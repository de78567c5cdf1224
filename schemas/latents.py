"""Stored video latents: the codec interface curation runs, its settings, and the bytes of a latent.

Curation may encode every sample's 1 + K frames once with the model's latent codec, so that
training reads latents instead of running the codec in every step. The codec is the model's
(``pretrain/codec.py``: the Wan2.2 VAE or pixel patches); curation never imports it. The
driver (``pipelines/curate.py``) hands curation a :data:`LatentEncoderFactory` built from
pretrain, as it does for the text encoder (:mod:`schemas.text`).

* :class:`LatentConfig` — which codec and with which video geometry: ``per_frame`` (each of the
  1 + K frames its own latent frame) or ``clip`` (the frames through the VAE as one clip: the
  observation alone, then ``vae_temporal`` frames per latent frame, GWP's and Wan2.2's layout).
* :class:`LatentEncoder` — ``encode(frames uint8 [N, F, H, W, 3]) → float32 [N, C, F', h, w]``
  and its ``identity`` (codec name, a key hashing everything that changes the latents, the
  geometry and the codec's settings), which the manifest records so that a model with another
  codec or geometry refuses the stored latents instead of training on them.
* :func:`latents_to_bytes` / :func:`latents_from_bytes` — the ``Sample.latents`` column:
  little-endian float32 in C order of ``Sample.latent_shape = (C, F', h, w)``; float32 so that
  training from stored latents sees the values the codec gave (no rounding in between).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from schemas.config import check_choices
from schemas.errors import ConfigError

LatentCodecKind = Literal["pixel", "wan-vae"]
LatentGeometry = Literal["per_frame", "clip"]
LATENT_CODEC_KINDS: tuple[str, ...] = typing.get_args(LatentCodecKind)
LATENT_GEOMETRIES: tuple[str, ...] = typing.get_args(LatentGeometry)
LATENT_DTYPE = "<f4"


@dataclass(frozen=True)
class LatentConfig:
    """A curation job's ``latents`` section: the codec whose latents the shards store."""

    codec: LatentCodecKind = "wan-vae"
    vae: str = field(
        default="",
        metadata={"help": "wan-vae: local folder or Hub repo id of the VAE (or a Wan2.2 pipeline)"},
    )
    patch: int = field(default=4, metadata={"help": "pixel codec: the s × s patch per latent position"})
    geometry: LatentGeometry = field(
        default="clip", metadata={"help": "the model preset's video geometry: one clip, or frame by frame"}
    )
    vae_temporal: int = field(
        default=4, metadata={"help": "clip: sample frames per latent frame (Wan2.2: 4)"}
    )
    batch_size: int = field(default=8, metadata={"help": "samples per codec call in a latent actor"})

    def __post_init__(self) -> None:
        w = "LatentConfig"
        check_choices(self, w)
        if self.codec == "wan-vae" and not self.vae:
            raise ConfigError(w, "vae", "codec 'wan-vae' needs the VAE's local folder or Hub repo id")
        for name in ("patch", "vae_temporal", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(w, name, f"must be >= 1, got {getattr(self, name)}")


class LatentEncoder(Protocol):
    """The model's codec as curation sees it (shapes in the module docstring)."""

    @property
    def identity(self) -> dict[str, Any]:
        """``{"codec", "key", "geometry", "config"}``: JSON-safe, recorded in the manifest."""
        ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def encode(self, frames_NFHWC: np.ndarray) -> np.ndarray: ...


# called once per curation actor (and once by the driver, to fail early) with the job's config and
# the device the actor was given ("cpu" or "cuda")
LatentEncoderFactory = Callable[[LatentConfig, str], LatentEncoder]


def latents_to_bytes(latents_CFhw: np.ndarray) -> bytes:
    """The ``Sample.latents`` bytes of one sample's latents (any float array, stored float32)."""
    return np.ascontiguousarray(latents_CFhw, dtype=LATENT_DTYPE).tobytes()


def latents_from_bytes(data: bytes, latent_shape: Sequence[int], where: str = "latents") -> np.ndarray:
    """float32 ``latent_shape`` array of ``Sample.latents`` bytes; a size that does not fit is an error."""
    shape = tuple(int(s) for s in latent_shape)
    want = 4 * int(np.prod(shape)) if shape else 0
    if not shape or len(data) != want:
        raise ValueError(f"{where}: {len(data)} latent bytes do not fit latent_shape {shape} (float32)")
    return np.frombuffer(data, dtype=LATENT_DTYPE).astype(np.float32).reshape(shape)


def identity_differences(stored: Mapping[str, Any], model: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"<field>: stored X, model Y"`` for every leaf where two codec identities differ (the
    ``key`` aside: it is a hash of the rest)."""
    out = []
    for name in sorted(set(stored) | set(model)):
        if not prefix and name == "key":
            continue
        a, b = stored.get(name, "<absent>"), model.get(name, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += identity_differences(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: stored {a!r}, model {b!r}")
    return out
