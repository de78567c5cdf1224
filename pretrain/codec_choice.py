"""Which latent codec a training run sees video through: settings a command line checks without torch.

The codecs and their registry (``pretrain/codec.py``: ``make_codec(name, **kwargs)``) need torch;
their names are also the ``Literal`` :data:`LatentCodecName` here, so ``--codec`` is generated from
a dataclass field (:mod:`pipelines.config_flags`) and a wrong name is refused before torch loads.
A test keeps :data:`LATENT_CODECS` equal to the registry's names.

``CodecChoice`` holds the choice and each codec's own argument: ``codec_patch`` (``"pixel"``: the
``s × s`` patch per latent position) or ``vae`` (``"wan-vae"``: a local folder or Hub repo id of
the VAE weights).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

LatentCodecName = Literal["pixel", "wan-vae"]
LATENT_CODECS: tuple[str, ...] = typing.get_args(LatentCodecName)


@dataclass(frozen=True)
class CodecChoice:
    codec: LatentCodecName = field(default="pixel", metadata={"help": "latent codec of the video"})
    codec_patch: int = field(default=4, metadata={"help": "pixel codec patch size"})
    vae: str | None = field(
        default=None, metadata={"help": "wan-vae codec: local folder or repo id of the VAE"}
    )
