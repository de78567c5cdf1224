"""The model's codec on both sides of stored latents: curation encodes with it, training checks it.

* :func:`latent_encoder_from_config` is the :data:`schemas.latents.LatentEncoderFactory` that
  ``pipelines/curate.py`` hands to curation's latent stage: the codec of a
  :class:`schemas.latents.LatentConfig`, set up for its video geometry by
  :func:`pretrain.codec.make_model_codec` — the very function the trainers build their codec
  with — behind :class:`CodecLatentEncoder` (uint8 frames ``[N, F, H, W, 3]`` →
  float32 latents ``[N, C, F', h, w]``, scaled to [-1, 1] as the training loader does).
* :func:`codec_identity` names a codec with its geometry; the manifest's ``latents`` keeps it.
* :func:`check_stored_latents` is what a trainer calls on a dataset before it trains: when the
  dataset stores latents they must come from the trainer's own codec and geometry (a mismatch
  is an error naming the shard file and every field that differs) and have the latent shape
  that codec gives the data's frames; then the loader hands them to the model and the codec
  is never called.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain.codec import LatentCodec, make_model_codec
from schemas.latents import LatentConfig, identity_differences
from schemas.pixels import to_unit_range

if TYPE_CHECKING:
    from pretrain.shards import ShardSet


def codec_identity(codec: LatentCodec, geometry: str) -> dict[str, Any]:
    """``{"codec", "key", "geometry", "config"}`` of a codec serving a model's video geometry (JSON-safe)."""
    config = json.loads(json.dumps(codec.config_dict(), sort_keys=True, default=str))
    return {"codec": codec.name, "key": codec.cache_key(), "geometry": geometry, "config": config}


class CodecLatentEncoder:
    """A :class:`~pretrain.codec.LatentCodec` as curation's :class:`schemas.latents.LatentEncoder`."""

    def __init__(self, codec: LatentCodec, geometry: str):
        self.codec = codec
        self.geometry = geometry
        self.identity = codec_identity(codec, geometry)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return self.codec.latent_shape(frames, height, width)

    @torch.no_grad()
    def encode(self, frames_NFHWC: np.ndarray) -> np.ndarray:
        x_NCFHW = torch.from_numpy(to_unit_range(frames_NFHWC)).permute(0, 4, 1, 2, 3)
        return self.codec.encode(x_NCFHW.contiguous()).to("cpu", torch.float32).numpy()


def latent_encoder_from_config(cfg: LatentConfig, device: str = "cpu") -> CodecLatentEncoder:
    """The codec ``cfg`` names, for its geometry, on ``device`` (a Wan VAE loaded from ``cfg.vae``)."""
    kwargs: dict[str, Any] = {"patch": cfg.patch} if cfg.codec == "pixel" else {"path_or_repo": cfg.vae}
    codec = make_model_codec(cfg.codec, kwargs, cfg.geometry, cfg.vae_temporal)
    return CodecLatentEncoder(codec.to(device), cfg.geometry)


def check_stored_latents(shards: ShardSet, codec: LatentCodec, geometry: str) -> bool:
    """True when ``shards`` store latents that ``codec`` with ``geometry`` would have made (the
    loader then uses them); False when they store none; a ValueError naming the shard file and
    what differs otherwise."""
    stored = shards.manifest.latents
    if not stored:
        return False
    first = shards.shards[0]
    mine = codec_identity(codec, geometry)
    if stored.get("key") != mine["key"] or stored.get("geometry") != geometry:
        diff = identity_differences({k: v for k, v in stored.items() if k in mine}, mine)
        raise ValueError(
            f"{first}: its stored latents were made by codec {stored.get('key')!r} with video geometry "
            f"{stored.get('geometry')!r} (the manifest's 'latents'), this model sees video through "
            f"{mine['key']!r} with geometry {geometry!r}; they differ in "
            f"{'; '.join(diff) or 'the codec key'}. Train with that codec and geometry, or curate the "
            "data again without --latents (or with this model's codec)"
        )
    from pretrain.stream import read_shard_columns

    for path in shards.shards:
        row = read_shard_columns(path, ["frame_indices", "height", "width", "latent_shape"]).slice(0, 1)
        if not row.num_rows:
            continue
        r = row.to_pylist()[0]
        want = list(codec.latent_shape(len(r["frame_indices"]), r["height"], r["width"]))
        if list(r["latent_shape"] or ()) != want:
            raise ValueError(
                f"{path}: stored latents have shape {r['latent_shape']}, the codec {mine['key']!r} gives "
                f"{want} for {len(r['frame_indices'])} frames of {r['width']}x{r['height']}"
            )
    return True


def describe(stored: dict[str, Any]) -> str:
    """One line naming a dataset's stored latents (for a trainer's log)."""
    return f"{stored['key']} ({stored['geometry']}, latent shape {stored.get('latent_shape')})"


__all__ = [
    "CodecLatentEncoder",
    "check_stored_latents",
    "codec_identity",
    "describe",
    "latent_encoder_from_config",
]
