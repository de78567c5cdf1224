"""Sample: one training row of a curated shard.

A window of an episode starting at frame t (ARCHITECTURE.md, "Data model")::

    frames       observation frame t and K future frames t + k·Δ, composed camera views,
                 stored encoded (``video`` bytes + ``video_format``) or as codec latents
    action       [p, 32] float32  normalised chunk a[t : t+p], padded to 32 dims
    action_mask  [32]    bool     valid action dims of the embodiment
    state        [32]    float32  normalised state at t, padded
    state_mask   [32]    bool

**Action-free samples** (windows of action-free video, see :mod:`schemas.episode`) have an
all-False ``action_mask``, an all-zero ``action`` of the usual ``[p, 32]`` shape (so batches
mixing both kinds stack) and no state either (``state_mask`` all False, ``state`` zero): the
statistics that normalise a state come from the rows with actions only, and pretraining hides
the state of such rows' actions anyway. The mask is the marker (no extra column).
So a row is either action-free in full (no action dim, no state dim) or it carries actions; a
row with state but no action dim is a mask that lost its actions, and stays an error.

The instruction's token states are not per sample: they are stored once per unique instruction
beside the shards (``schemas.text_store``).

**Stored latents** (schema 3.1, optional): ``latents`` holds the frames' codec latents beside the
encoded frames, when curation ran its latent stage (:mod:`schemas.latents`: float32 bytes of
shape ``latent_shape = (C, F', h, w)``; the manifest's ``latents`` names the codec). A row
without them has ``latents`` null or empty; shards written before 3.1 have no such column,
and readers treat it as absent (:data:`OPTIONAL_COLUMNS`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.checks import require_array, require_choice, require_int, require_str
from schemas.embodiment import MAX_DIM
from schemas.episode import GWP_NAMESPACE
from schemas.errors import SchemaError

VIDEO_FORMATS = ("mp4", "png", "latent")
OPTIONAL_COLUMNS = ("latents",)  # columns a reader may find missing (shards written before they existed)
QUALITY_KEYS = ("motion", "clip_score", "brightness", "sharpness")


def window_geometry(chunk: int, stride_frames: int, num_future: int) -> str:
    """Name of a window geometry, part of every sample id (p, Δ, K)."""
    return f"p{chunk}-d{stride_frames}-k{num_future}"


def sample_id_for(episode_id: str, start_frame: int, geometry: str) -> str:
    return str(uuid.uuid5(GWP_NAMESPACE, f"sample:{episode_id}:{start_frame}:{geometry}"))


@dataclass(frozen=True, eq=False)
class Sample:
    sample_id: str
    episode_id: str
    source: str
    embodiment: str
    embodiment_id: int
    start_frame: int
    frame_indices: tuple[int, ...]  # t, t+Δ, …, t+KΔ
    instruction: str
    caption: str
    video: bytes
    video_format: str
    height: int
    width: int
    action: np.ndarray
    action_mask: np.ndarray
    state: np.ndarray
    state_mask: np.ndarray
    quality: dict[str, float] = field(default_factory=dict)
    latent_shape: tuple[int, ...] = ()
    latents: bytes = b""  # stored codec latents, float32 of latent_shape (empty: none)

    @property
    def chunk(self) -> int:
        return int(self.action.shape[0])

    @property
    def has_action(self) -> bool:
        return bool(self.action_mask.any())

    def with_(self, **changes: Any) -> Sample:
        return replace(self, **changes)

    def validate(self) -> Sample:
        r = "Sample"
        for name in ("sample_id", "episode_id", "source", "embodiment"):
            require_str(r, name, getattr(self, name))
        require_str(r, "instruction", self.instruction, nonempty=False)
        require_str(r, "caption", self.caption, nonempty=False)
        require_int(r, "embodiment_id", self.embodiment_id, minimum=0)
        require_int(r, "start_frame", self.start_frame, minimum=0)
        if not self.frame_indices or self.frame_indices[0] != self.start_frame:
            raise SchemaError(r, "frame_indices", "must start with start_frame")
        if any(b <= a for a, b in zip(self.frame_indices, self.frame_indices[1:], strict=False)):
            raise SchemaError(r, "frame_indices", f"must increase, got {list(self.frame_indices)}")
        require_choice(r, "video_format", self.video_format, VIDEO_FORMATS)
        if not isinstance(self.video, (bytes, bytearray)) or not self.video:
            raise SchemaError(r, "video", "expected non-empty encoded bytes")
        require_int(r, "height", self.height, minimum=1)
        require_int(r, "width", self.width, minimum=1)
        if self.video_format == "latent" and not self.latent_shape:
            raise SchemaError(r, "latent_shape", "required when video_format is 'latent'")
        if self.latents:
            if self.video_format == "latent":
                raise SchemaError(r, "latents", "must be empty when video_format is 'latent'")
            want = 4 * int(np.prod(self.latent_shape)) if self.latent_shape else 0
            if len(self.latents) != want:
                raise SchemaError(
                    r,
                    "latents",
                    f"{len(self.latents)} bytes do not fit latent_shape {self.latent_shape} (float32)",
                )
        require_array(r, "action", self.action, shape=(None, MAX_DIM), dtype=np.float32, finite=True)
        if self.action.shape[0] < 1:
            raise SchemaError(r, "action", "chunk must have at least one step")
        require_array(r, "action_mask", self.action_mask, shape=(MAX_DIM,), dtype=np.bool_)
        require_array(r, "state", self.state, shape=(MAX_DIM,), dtype=np.float32, finite=True)
        require_array(r, "state_mask", self.state_mask, shape=(MAX_DIM,), dtype=np.bool_)
        if not self.action_mask.any() and self.state_mask.any():
            raise SchemaError(
                r, "action_mask", "no valid action dim but a valid state (action-free rows carry neither)"
            )
        for name, values, mask in (
            ("action", self.action, self.action_mask),
            ("state", self.state, self.state_mask),
        ):
            if np.any(values[..., ~mask] != 0):
                raise SchemaError(r, name, "padded dims (mask False) must be zero")
        for key, value in self.quality.items():
            require_choice(r, "quality", key, QUALITY_KEYS)
            if value is not None and not np.isfinite(value):
                raise SchemaError(r, f"quality[{key}]", f"must be finite, got {value}")
        return self

    # ---- Arrow ---------------------------------------------------------------------
    @staticmethod
    def arrow_schema() -> pa.Schema:
        quality = pa.struct([(k, pa.float32()) for k in QUALITY_KEYS])
        return pa.schema(
            [
                ("sample_id", pa.string()),
                ("episode_id", pa.string()),
                ("source", pa.string()),
                ("embodiment", pa.string()),
                ("embodiment_id", pa.int32()),
                ("start_frame", pa.int64()),
                ("frame_indices", pa.list_(pa.int64())),
                ("instruction", pa.string()),
                ("caption", pa.string()),
                ("video", pa.binary()),
                ("video_format", pa.string()),
                ("height", pa.int32()),
                ("width", pa.int32()),
                ("action", pa.list_(pa.list_(pa.float32()))),
                ("action_mask", pa.list_(pa.bool_())),
                ("state", pa.list_(pa.float32())),
                ("state_mask", pa.list_(pa.bool_())),
                ("quality", quality),
                ("latent_shape", pa.list_(pa.int32())),
                ("latents", pa.binary()),
            ]
        )

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["frame_indices"] = list(self.frame_indices)
        row["video"] = bytes(self.video)
        for name in ("action", "action_mask", "state", "state_mask"):
            row[name] = row[name].tolist()
        # quality scores are float32 in the shard; round here so a round trip is exact
        row["quality"] = {
            k: None if self.quality.get(k) is None else float(np.float32(self.quality[k]))
            for k in QUALITY_KEYS
        }
        row["latent_shape"] = list(self.latent_shape)
        row["latents"] = bytes(self.latents) if self.latents else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        quality = {k: float(np.float32(v)) for k, v in (row.get("quality") or {}).items() if v is not None}
        return cls(
            sample_id=row["sample_id"],
            episode_id=row["episode_id"],
            source=row["source"],
            embodiment=row["embodiment"],
            embodiment_id=int(row["embodiment_id"]),
            start_frame=int(row["start_frame"]),
            frame_indices=tuple(int(i) for i in row["frame_indices"]),
            instruction=row["instruction"],
            caption=row["caption"],
            video=bytes(row["video"]),
            video_format=row["video_format"],
            height=int(row["height"]),
            width=int(row["width"]),
            action=np.asarray(row["action"], dtype=np.float32).reshape(-1, MAX_DIM),
            action_mask=np.asarray(row["action_mask"], dtype=bool),
            state=np.asarray(row["state"], dtype=np.float32),
            state_mask=np.asarray(row["state_mask"], dtype=bool),
            quality=quality,
            latent_shape=tuple(row.get("latent_shape") or ()),
            latents=bytes(row.get("latents") or b""),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self.to_row() == other.to_row()

    __hash__ = None  # type: ignore[assignment]
