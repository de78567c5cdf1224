"""Mapping from a source's own keys to an EmbodimentSpec, given as data.

Every source names things its own way (``observation.images.cam_high``, ``obs/agentview_image``,
``steps/observation/image``). A :class:`SourceMapping` says, for one source, which key is
which camera role, which keys hold state and action, which embodiment it is, and where the
instruction comes from. It is read from, in order:

1. the ``mapping`` argument given to the reader (from the curation config),
2. a ``gwp_source.json`` file in the source root (written by our writers),
3. a preset named in the config (``MAPPING_PRESETS``) — never guessed silently.

``extra["channel_order"]`` (optional) maps a camera's source key to ``"rgb"`` or ``"bgr"``,
for sources that store blue first (frames written by OpenCV); decoding then swaps the
channels (:func:`curation.frames.to_rgb8`). Keys not listed are RGB.
``extra["pixel_range"]`` (optional) maps a camera's source key to ``[lo, hi]``, the range its
pixel values span (a 12-bit camera in uint16: ``[0, 4095]``; a float camera in [-1, 1]);
decoding maps it linearly onto 0..255 and rejects values outside it. Keys not listed are
read by their dtype's convention.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas import SchemaError, get_embodiment
from schemas.episode import CHANNEL_ORDERS

SIDECAR_NAME = "gwp_source.json"


@dataclass(frozen=True)
class SourceMapping:
    embodiment: str
    cameras: dict[str, str]  # source key -> camera role
    state_key: str = "observation.state"
    action_key: str = "action"
    instruction: str = ""  # fallback instruction when the source has none
    source: str = ""  # dataset name used in episode ids and lineage
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "SourceMapping") -> SourceMapping:
        try:
            spec = get_embodiment(self.embodiment)
        except KeyError as err:
            raise SchemaError(where, "embodiment", err.args[0]) from None
        for key, role in self.cameras.items():
            if role not in spec.cameras:
                raise SchemaError(
                    where, f"cameras[{key}]", f"role {role!r} not in {list(spec.cameras)} of {spec.name}"
                )
        orders = self.extra.get("channel_order", {})
        if not isinstance(orders, dict):
            raise SchemaError(where, "extra.channel_order", "must map camera keys to 'rgb' or 'bgr'")
        for key, order in orders.items():
            if order not in CHANNEL_ORDERS:
                raise SchemaError(
                    where,
                    f"extra.channel_order[{key}]",
                    f"must be one of {list(CHANNEL_ORDERS)}, got {order!r}",
                )
            if key not in self.cameras:
                raise SchemaError(
                    where,
                    f"extra.channel_order[{key}]",
                    f"not a camera key of this mapping: {sorted(self.cameras)}",
                )
        self._check_pixel_ranges(where)
        return self

    def _check_pixel_ranges(self, where: str) -> None:
        ranges = self.extra.get("pixel_range", {})
        if not isinstance(ranges, dict):
            raise SchemaError(where, "extra.pixel_range", "must map camera keys to [lo, hi]")
        for key, value in ranges.items():
            ok = (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                and value[0] < value[1]
            )
            if not ok:
                raise SchemaError(
                    where, f"extra.pixel_range[{key}]", f"must be [lo, hi] with lo < hi, got {value!r}"
                )
            if key not in self.cameras:
                raise SchemaError(
                    where,
                    f"extra.pixel_range[{key}]",
                    f"not a camera key of this mapping: {sorted(self.cameras)}",
                )

    def pixel_range(self, key: str) -> tuple[float, ...]:
        """The declared ``(lo, hi)`` of the camera stored under ``key``, or ``()``."""
        return tuple(float(v) for v in self.extra.get("pixel_range", {}).get(key, ()))

    def channel_order(self, key: str) -> str:
        """``"bgr"`` or ``"rgb"`` for the camera stored under source key ``key``."""
        return str(self.extra.get("channel_order", {}).get(key, "rgb"))

    def role_of(self, key: str) -> str | None:
        return self.cameras.get(key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "SourceMapping") -> SourceMapping:
        allowed = {"embodiment", "cameras", "state_key", "action_key", "instruction", "source", "extra"}
        unknown = set(data) - allowed
        if unknown:
            raise SchemaError(where, sorted(unknown)[0], f"unknown field; allowed: {sorted(allowed)}")
        if "embodiment" not in data:
            raise SchemaError(where, "embodiment", "missing")
        return cls(**{"cameras": {}, **data}).validate(where)

    def write(self, root: str | Path) -> Path:
        path = Path(root) / SIDECAR_NAME if Path(root).is_dir() else Path(str(root) + "." + SIDECAR_NAME)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def for_source(cls, root: str | Path, fmt: str) -> SourceMapping:
        """The mapping stored beside ``root`` (folder sidecar, or ``<file>.gwp_source.json``)."""
        root = Path(root)
        candidates = [root / SIDECAR_NAME] if root.is_dir() else [Path(str(root) + "." + SIDECAR_NAME)]
        for path in candidates:
            if path.exists():
                return cls.from_dict(json.loads(path.read_text()), where=str(path))
        raise SchemaError(
            "SourceMapping",
            "<source>",
            f"{root}: no mapping for this {fmt} source; pass one in the config or write {candidates[0]}",
        )
