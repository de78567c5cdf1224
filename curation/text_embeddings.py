"""Curation's text phase: embed every unique instruction of the written shards once and store the
token states beside them (format: :mod:`schemas.text_store`).

It runs on the driver after the shards are written, so each instruction is encoded exactly once
whatever the number of samples, episodes or Ray tasks that share it. The encoder comes from a
:data:`schemas.text.TextEncoderFactory` the driver passes in (umT5 is the model's, in
``pretrain/text_encoder.py``); without one, only the torch-free ``hashed`` encoder can be built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import ShardInfo
from schemas.text import HashedTokenEncoder, TextEncoderConfig, TextEncoderFactory
from schemas.text_store import TextStore


def make_text_encoder(cfg: TextEncoderConfig, factory: TextEncoderFactory | None):
    """The encoder ``cfg`` names: from the driver's factory, or the built-in hashed one."""
    if factory is not None:
        return factory(cfg)
    if cfg.kind != "hashed":
        raise ValueError(
            f"the job's text encoder is {cfg.kind!r} but no text-encoder factory was given: pass "
            "run(job, text_encoder=...), e.g. pretrain.text_encoder.text_encoder_from_config"
        )
    return HashedTokenEncoder(cfg)


def embed_instructions(out: Path, shards: Sequence[ShardInfo], encoder: Any) -> dict[str, Any]:
    """Encode the shards' unique instructions, write the store; the manifest's ``text`` entry."""
    unique: set[str] = set()
    for s in shards:
        column = pq.read_table(Path(out) / s.name, columns=["instruction"]).column("instruction")
        unique.update(pc.unique(column).to_pylist())
    return TextStore.encode(unique, encoder).write(Path(out))
