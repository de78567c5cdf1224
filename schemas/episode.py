"""Episode: one demonstration as read from a source, before windowing.

Shapes (T = steps, Ds/Da = the embodiment's state/action dims, H×W×3 uint8 frames)::

    state      [T, Ds]  float32   ([T, 0] allowed only in an action-free episode)
    action     [T, Da]  float32   ([T, 0]: action-free video, see below)
    timestamps [T]      float64 seconds from the episode start
    cameras    role -> FrameRef   (frames decoded lazily by ``curation.frames``)

**Action-free episodes** (human or unlabelled robot video: raw video with no step table, or a
source whose mapping sets ``"actions": false``) hold ``action`` with zero columns, ``[T, 0]``,
so the step count T stays in the array as for every episode; their state is optional
(``[T, Ds]`` or ``[T, 0]``). Zero columns is the only way to say "no actions": an action of
the embodiment's width that is partly missing (a wrong width, NaN) is still an error, and an
episode with actions must carry its state (delta action dims are relative to it).

A :class:`FrameRef` says where one camera's frames live: a span of a video file, a
dataset inside an HDF5 file, per-frame encoded images (RLDS), or an inline array. A video's
frames are chosen by presentation time: ``times`` (one per step, seconds on the file's clock)
where the steps are not the constant-rate grid ``(start + i) / fps``.
The Arrow form carries references, not decoded video, so Episodes cross Ray workers
cheaply; inline arrays travel as raw bytes with their shape.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.checks import require_array, require_choice, require_int, require_positive, require_str
from schemas.embodiment import get_embodiment
from schemas.errors import SchemaError

FRAME_KINDS = ("video", "hdf5", "encoded", "inline")
CHANNEL_ORDERS = ("rgb", "bgr")
# Namespace for every deterministic id in the toolkit (uuid5).
GWP_NAMESPACE = uuid.UUID("5d1b7a38-2f0e-4c55-9a43-7c6f3f1de0a1")


def episode_id_for(dataset_id: str, path: str, index: int) -> str:
    """Stable episode id from the dataset's identity (a content fingerprint, never a bare name:
    see ``curation.formats.fingerprint``), file path (relative to the dataset root) and index."""
    return str(uuid.uuid5(GWP_NAMESPACE, f"episode:{dataset_id}:{path}:{index}"))


@dataclass(frozen=True, eq=False)
class FrameRef:
    """Where one camera's frames live; ``start``/``stop`` index frames within ``path``.

    For a video, step ``i``'s frame is the one presented at ``times[i]`` seconds (from the
    file's first frame), or at ``(start + i) / fps`` when ``times`` is empty (the common,
    constant-rate case, kept out of the rows); ``stop - start`` is the step count either way.
    """

    kind: str
    path: str = ""
    key: str = ""
    start: int = 0
    stop: int = 0
    fps: float = 0.0
    array: np.ndarray | None = None  # inline: [T, H, W, 3] uint8
    encoded: tuple[bytes, ...] = ()  # encoded: one PNG/JPEG per frame
    times: tuple[float, ...] = ()  # video: presentation time (s) of each step's frame; () = the fps grid
    # "bgr" where the source stores blue first (set from the source mapping); decoding swaps it
    channel_order: str = "rgb"
    # (lo, hi) the source declares for its pixel values (e.g. 12-bit: (0, 4095)); () = by dtype
    pixel_range: tuple[float, ...] = ()

    @property
    def num_frames(self) -> int:
        if self.kind == "inline":
            return 0 if self.array is None else int(self.array.shape[0])
        if self.kind == "encoded":
            return len(self.encoded)
        return self.stop - self.start

    def validate(self, where: str = "FrameRef") -> FrameRef:
        require_choice(where, "kind", self.kind, FRAME_KINDS)
        require_choice(where, "channel_order", self.channel_order, CHANNEL_ORDERS)
        if self.pixel_range and not (
            len(self.pixel_range) == 2
            and all(np.isfinite(self.pixel_range))
            and self.pixel_range[0] < self.pixel_range[1]
        ):
            raise SchemaError(
                where, "pixel_range", f"want () or (lo, hi) with lo < hi, got {self.pixel_range}"
            )
        if self.kind in ("video", "hdf5"):
            require_str(where, "path", self.path)
            require_int(where, "start", self.start, minimum=0)
            require_int(where, "stop", self.stop, minimum=self.start)
        if self.kind == "hdf5":
            require_str(where, "key", self.key)
        if self.times and (self.kind != "video" or len(self.times) != self.stop - self.start):
            raise SchemaError(
                where, "times", f"{len(self.times)} times for a {self.kind} ref of {self.num_frames} frames"
            )
        if self.kind == "inline":
            require_array(where, "array", self.array, shape=(None, None, None, 3), dtype=np.uint8)
        return self

    def to_row(self) -> dict[str, Any]:
        arr = self.array
        return {
            "kind": self.kind,
            "path": self.path,
            "key": self.key,
            "start": int(self.start),
            "stop": int(self.stop),
            "fps": float(self.fps),
            "shape": list(arr.shape) if arr is not None else [],
            "data": arr.tobytes() if arr is not None else None,
            "encoded": list(self.encoded),
            "times": list(self.times),
            "channel_order": self.channel_order,
            "pixel_range": [float(v) for v in self.pixel_range],
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FrameRef:
        arr = None
        if row.get("data") is not None:
            arr = np.frombuffer(row["data"], dtype=np.uint8).reshape(row["shape"]).copy()
        return cls(
            kind=row["kind"],
            path=row["path"] or "",
            key=row["key"] or "",
            start=row["start"],
            stop=row["stop"],
            fps=row["fps"],
            array=arr,
            encoded=tuple(row.get("encoded") or ()),
            times=tuple(row.get("times") or ()),
            channel_order=row.get("channel_order") or "rgb",
            pixel_range=tuple(row.get("pixel_range") or ()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameRef):
            return NotImplemented
        a, b = self.to_row(), other.to_row()
        return a == b

    __hash__ = None  # type: ignore[assignment]


FRAME_REF_TYPE = pa.struct(
    [
        ("kind", pa.string()),
        ("path", pa.string()),
        ("key", pa.string()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("fps", pa.float64()),
        ("shape", pa.list_(pa.int32())),
        ("data", pa.large_binary()),
        ("encoded", pa.list_(pa.binary())),
        ("times", pa.list_(pa.float64())),
        ("channel_order", pa.string()),
        ("pixel_range", pa.list_(pa.float64())),
    ]
)


@dataclass(frozen=True, eq=False)
class Episode:
    episode_id: str
    source: str
    embodiment: str
    instruction: str
    fps: float
    state: np.ndarray
    action: np.ndarray
    timestamps: np.ndarray
    cameras: dict[str, FrameRef] = field(default_factory=dict)
    source_path: str = ""  # the file it came from, for the rejection ledger
    source_index: int = 0  # its index within the source

    @property
    def length(self) -> int:
        return int(self.action.shape[0])

    @property
    def has_action(self) -> bool:
        """False for action-free video (``action`` is ``[T, 0]``)."""
        return self.action.ndim != 2 or self.action.shape[1] > 0

    def without_actions(self) -> Episode:
        """The same video with its actions and state dropped (``[T, 0]`` each)."""
        empty = np.zeros((self.length, 0), dtype=np.float32)
        return replace(self, action=empty, state=empty.copy())

    def with_(self, **changes: Any) -> Episode:
        return replace(self, **changes)

    def validate(self, *, finite: bool = True) -> Episode:
        """Check fields against the embodiment spec; ``finite`` also rejects NaN/inf."""
        r = "Episode"
        require_str(r, "episode_id", self.episode_id)
        require_str(r, "source", self.source)
        require_str(r, "instruction", self.instruction, nonempty=False)
        require_positive(r, "fps", self.fps)
        try:
            spec = get_embodiment(self.embodiment)
        except KeyError as err:
            raise SchemaError(r, "embodiment", err.args[0]) from None
        action_dim = spec.action_dim if self.has_action else 0
        require_array(r, "action", self.action, shape=(None, action_dim), dtype=np.float32, finite=finite)
        t = self.action.shape[0]
        if t == 0:
            raise SchemaError(r, "action", "episode has zero steps")
        if self.has_action or self.state.ndim != 2 or self.state.shape[1] != 0:
            require_array(r, "state", self.state, shape=(t, spec.state_dim), dtype=np.float32, finite=finite)
        else:
            require_array(r, "state", self.state, shape=(t, 0), dtype=np.float32)
        require_array(r, "timestamps", self.timestamps, shape=(t,), dtype=np.float64, finite=True)
        for role, ref in self.cameras.items():
            require_choice(r, "cameras", role, spec.cameras)
            ref.validate(f"Episode.cameras[{role}]")
            n = ref.num_frames
            if n != t:
                raise SchemaError(r, f"cameras[{role}]", f"has {n} frames but the episode has {t} steps")
        return self

    # ---- Arrow ---------------------------------------------------------------------
    @staticmethod
    def arrow_schema() -> pa.Schema:
        return pa.schema(
            [
                ("episode_id", pa.string()),
                ("source", pa.string()),
                ("embodiment", pa.string()),
                ("instruction", pa.string()),
                ("fps", pa.float64()),
                ("length", pa.int64()),
                ("state", pa.list_(pa.list_(pa.float32()))),
                ("action", pa.list_(pa.list_(pa.float32()))),
                ("timestamps", pa.list_(pa.float64())),
                ("cameras", pa.map_(pa.string(), FRAME_REF_TYPE)),
                ("source_path", pa.string()),
                ("source_index", pa.int64()),
            ]
        )

    def to_row(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "source": self.source,
            "embodiment": self.embodiment,
            "instruction": self.instruction,
            "fps": float(self.fps),
            "length": self.length,
            "state": self.state.tolist(),
            "action": self.action.tolist(),
            "timestamps": self.timestamps.tolist(),
            "cameras": [(k, v.to_row()) for k, v in self.cameras.items()],
            "source_path": self.source_path,
            "source_index": int(self.source_index),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Episode:
        cams = row["cameras"]
        cams = cams.items() if isinstance(cams, dict) else cams
        ds = len(row["state"][0]) if len(row["state"]) else 0
        da = len(row["action"][0]) if len(row["action"]) else 0
        return cls(
            episode_id=row["episode_id"],
            source=row["source"],
            embodiment=row["embodiment"],
            instruction=row["instruction"],
            fps=row["fps"],
            # rows keep T when the width is 0 (action-free): reshape by the row count, not -1
            state=np.asarray(row["state"], dtype=np.float32).reshape(len(row["state"]), ds),
            action=np.asarray(row["action"], dtype=np.float32).reshape(len(row["action"]), da),
            timestamps=np.asarray(row["timestamps"], dtype=np.float64),
            cameras={k: FrameRef.from_row(v) for k, v in cams},
            source_path=row.get("source_path", "") or "",
            source_index=row.get("source_index", 0) or 0,
        )

    def content_hash(self) -> str:
        """sha256 of the numeric content and instruction (not the frames)."""
        h = hashlib.sha256()
        for part in (self.state, self.action, self.timestamps):
            h.update(np.ascontiguousarray(part).tobytes())
        h.update(self.instruction.encode())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Episode):
            return NotImplemented
        return self.to_row() == other.to_row()

    __hash__ = None  # type: ignore[assignment]
