"""Sample: one training row of a curated shard.

A window of an episode starting at frame t (DESIGN.md §3–§4)::

    frames       observation frame t and K future frames t + k·Δ, composed camera views,
                 stored encoded (``video`` bytes + ``video_format``) or as codec latents
    action       [p, 32] float32  normalised chunk a[t : t+p], padded to 32 dims
    action_mask  [32]    bool     valid action dims of the embodiment
    state        [32]    float32  normalised state at t, padded
    state_mask   [32]    bool
    text_embedding [E]   float32  CLIP text embedding of the instruction (optional)
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
    text_embedding: np.ndarray | None = None
    latent_shape: tuple[int, ...] = ()

    @property
    def chunk(self) -> int:
        return int(self.action.shape[0])

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
        require_array(r, "action", self.action, shape=(None, MAX_DIM), dtype=np.float32, finite=True)
        if self.action.shape[0] < 1:
            raise SchemaError(r, "action", "chunk must have at least one step")
        require_array(r, "action_mask", self.action_mask, shape=(MAX_DIM,), dtype=np.bool_)
        require_array(r, "state", self.state, shape=(MAX_DIM,), dtype=np.float32, finite=True)
        require_array(r, "state_mask", self.state_mask, shape=(MAX_DIM,), dtype=np.bool_)
        if not self.action_mask.any():
            raise SchemaError(r, "action_mask", "no valid action dim")
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
        if self.text_embedding is not None:
            require_array(
                r, "text_embedding", self.text_embedding, shape=(None,), dtype=np.float32, finite=True
            )
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
                ("text_embedding", pa.list_(pa.float32())),
                ("latent_shape", pa.list_(pa.int32())),
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
        row["text_embedding"] = None if self.text_embedding is None else self.text_embedding.tolist()
        row["latent_shape"] = list(self.latent_shape)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        emb = row.get("text_embedding")
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
            text_embedding=None if emb is None else np.asarray(emb, dtype=np.float32),
            latent_shape=tuple(row.get("latent_shape") or ()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return self.to_row() == other.to_row()

    __hash__ = None  # type: ignore[assignment]
