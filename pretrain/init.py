"""Where a run's first transformer weights come from: ``--init`` of ``gwp finetune`` and ``gwp pretrain``.

A source is a local folder or a Hub model repo id, and is one of two kinds, told apart by its
files (:func:`resolve_init`):

* ``gwp`` — our checkpoint: ``model.safetensors`` + a ``config.json`` that holds a
  ``ModelConfig`` somewhere inside (the trainer's export, a ``save_pretrained`` policy folder).
* ``wan`` — a diffusers Wan transformer: a folder whose ``config.json`` says
  ``"_class_name": "WanTransformer3DModel"`` (weights in ``*.safetensors``, sharded or not), or a
  diffusers pipeline folder (Wan2.2-TI2V-5B-Diffusers) with that folder as ``transformer/``.
  Its backbone maps onto ours through ``pretrain/wan_adapter.py``; our state/action encoders and
  action head start fresh.

A Hub repo id is downloaded with only the files either kind needs (no VAE, no text encoder).

Wan weights were trained on Wan VAE latents. The pixel codec has the same 48 channels, so a Wan
backbone would run on raw pixel patches without any shape error: :func:`check_init_codec`
refuses that combination and says what to use instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas.hub.client import download_snapshot, local_folder

InitKind = Literal["gwp", "wan"]
WAN_CLASS = "WanTransformer3DModel"
# what a download needs of either kind: our two files, or a Wan transformer (alone or in a pipeline)
INIT_FILES = (
    "model.safetensors",
    "config.json",
    "model_index.json",
    "*.safetensors.index.json",
    "diffusion_pytorch_model*.safetensors",
    "transformer/config.json",
    "transformer/*.safetensors",
    "transformer/*.safetensors.index.json",
)


@dataclass(frozen=True)
class InitSource:
    kind: InitKind
    folder: Path  # ours: the checkpoint folder; wan: the folder holding the transformer's config.json
    source: str  # what the user passed


def _class_name(config: Path) -> str | None:
    try:
        meta = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta.get("_class_name") if isinstance(meta, dict) else None


def wan_transformer_folder(folder: Path) -> Path | None:
    """The folder of a diffusers Wan transformer in ``folder`` (itself or its ``transformer/``), or None."""
    for cand in (folder, folder / "transformer"):
        if (cand / "config.json").is_file() and _class_name(cand / "config.json") == WAN_CLASS:
            return cand
    return None


def _local_folder(source: str, revision: str | None) -> Path:
    local = local_folder(source, "a model folder")
    if local is not None:
        return local
    return download_snapshot(source, repo_type="model", revision=revision, allow_patterns=INIT_FILES)


def resolve_init(source: str | os.PathLike, revision: str | None = None) -> InitSource:
    """Which kind of checkpoint ``source`` is, and the local folder to read it from."""
    text = str(source)
    folder = _local_folder(text, revision)
    wan = wan_transformer_folder(folder)
    if wan is not None:
        return InitSource("wan", wan, text)
    return InitSource("gwp", folder, text)


def check_init_codec(init: InitSource, codec: str, flag: str = "--init") -> None:
    """Refuse Wan weights with a codec whose latents are not the Wan VAE's."""
    if init.kind == "wan" and codec != "wan-vae":
        raise ValueError(
            f"{flag} {init.source}: a diffusers Wan transformer was trained on Wan VAE latents, but the "
            f"codec is {codec!r} (raw pixel patches with the same 48 channels, which Wan has never seen); "
            "use --codec wan-vae --vae <the Wan2.2 VAE: a local folder, or Wan-AI/Wan2.2-TI2V-5B-Diffusers>, "
            "or --init none to train the pixel-codec model from scratch"
        )
