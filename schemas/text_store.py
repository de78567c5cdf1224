"""Instruction token states stored once per dataset, beside the shards (torch-free).

Instructions repeat across thousands of samples, and umT5-XXL states are 4096 floats per
token, so they are stored once per *unique* instruction, never per sample::

    meta/text_embeddings.safetensors   states [U, L, E] float32 (zero past each row's tokens)
                                       mask   [U, L]    bool    (True = a real token)

and indexed in the manifest's ``text`` entry (:meth:`TextStore.index`)::

    {"file": "meta/text_embeddings.safetensors", "encoder": {kind, name, subfolder, dim,
     max_tokens}, "instructions": [U sorted strings], "tokens": L, "dim": E, "sha256": …}

Row ``i`` of the file belongs to ``instructions[i]``. The encoder's identity travels with the
states, so a policy embeds instructions at inference with the same encoder the data used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.errors import SchemaError
from schemas.text import TextEncoder

TEXT_EMBEDDINGS_FILE = "meta/text_embeddings.safetensors"
_ENCODE_BATCH = 32  # instructions per encoder call: bounds the encoder's activation memory


@dataclass(frozen=True)
class TextStore:
    """The token states of a dataset's unique instructions."""

    encoder: dict[str, Any]
    instructions: tuple[str, ...]
    states_ULE: np.ndarray
    mask_UL: np.ndarray

    @classmethod
    def encode(cls, instructions: Iterable[str], encoder: TextEncoder) -> TextStore:
        texts = sorted(set(instructions))
        if not texts:
            raise ValueError("no instructions to embed")
        parts = [encoder.encode(texts[i : i + _ENCODE_BATCH]) for i in range(0, len(texts), _ENCODE_BATCH)]
        L = max(s.shape[1] for s, _ in parts)
        E = parts[0][0].shape[2]
        states = np.zeros((len(texts), L, E), np.float32)
        mask = np.zeros((len(texts), L), bool)
        row = 0
        for s, m in parts:
            states[row : row + len(s), : s.shape[1]] = s
            mask[row : row + len(s), : m.shape[1]] = m
            row += len(s)
        if not mask.any(axis=1).all():
            empty = [t for t, m in zip(texts, mask, strict=True) if not m.any()]
            raise ValueError(f"text encoder {encoder.identity} gave no token for {empty[:3]}")
        return cls(dict(encoder.identity), tuple(texts), states, mask)

    def write(self, root: Path) -> dict[str, Any]:
        """Write the file under ``root`` and return the manifest's ``text`` entry."""
        from safetensors.numpy import save

        data = save({"states": np.ascontiguousarray(self.states_ULE), "mask": self.mask_UL})
        path = Path(root) / TEXT_EMBEDDINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return {
            "file": TEXT_EMBEDDINGS_FILE,
            "encoder": self.encoder,
            "instructions": list(self.instructions),
            "tokens": int(self.states_ULE.shape[1]),
            "dim": int(self.states_ULE.shape[2]),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    @classmethod
    def read(cls, root: Path, index: Mapping[str, Any] | None, where: str) -> TextStore:
        """The store a manifest (``where``) indexes; every mismatch names the file."""
        if not index:
            raise SchemaError(where, "text", "no text-embedding index (the dataset cannot condition on text)")
        path = Path(root) / index["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: instruction embeddings listed in {where} but missing")
        return cls.from_bytes(path.read_bytes(), index, str(path), where)

    @classmethod
    def from_bytes(cls, data: bytes, index: Mapping[str, Any], path: str, where: str) -> TextStore:
        """The store from the file's bytes (``path`` names it in errors: a local file or a URL)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        if hashlib.sha256(data).hexdigest() != index["sha256"]:
            raise SchemaError(
                str(path), "sha256", f"does not match {where} (the file was changed or truncated)"
            )
        try:
            tensors = load(data)
        except SafetensorError as err:
            raise SchemaError(str(path), "file", f"not a readable safetensors file ({err})") from err
        states, mask = tensors.get("states"), tensors.get("mask")
        U, L, E = len(index["instructions"]), int(index["tokens"]), int(index["dim"])
        if states is None or mask is None or states.shape != (U, L, E) or mask.shape != (U, L):
            found = {k: list(v.shape) for k, v in tensors.items()}
            raise SchemaError(
                str(path), "states", f"has {found}, {where} says states [{U}, {L}, {E}], mask [{U}, {L}]"
            )
        return cls(
            dict(index["encoder"]), tuple(index["instructions"]), states.astype(np.float32), mask.astype(bool)
        )

    def rows(self, instructions: list[str], where: str) -> np.ndarray:
        """Row numbers of ``instructions``; an instruction the store lacks is an error naming ``where``."""
        at = {t: i for i, t in enumerate(self.instructions)}
        missing = sorted({t for t in instructions if t not in at})
        if missing:
            raise SchemaError(
                where, "instruction", f"{missing[:3]} not in the dataset's instruction embeddings"
            )
        return np.asarray([at[t] for t in instructions], dtype=np.int64)
