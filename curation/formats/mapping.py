"""Mapping from a source's own keys to an EmbodimentSpec, given as data.

Every source names things its own way (``observation.images.cam_high``, ``obs/agentview_image``,
``steps/observation/image``). A :class:`SourceMapping` says, for one source, which key is
which camera role, which keys hold state and action, which embodiment it is, and where the
instruction comes from. It is read from, in order:

1. the ``mapping`` argument given to the reader (from the curation config),
2. a ``gwp_source.json`` file in the source root, or ``<file>.gwp_source.json`` beside a
   single-file source (written by our writers and by ``gwp inspect --write``),
3. for LeRobot v2.1/v3.0 and RLDS sources that use their format's own key names, the
   mapping :mod:`curation.formats.conventions` derives from the metadata (cameras by name,
   embodiment from ``--embodiment``, ``robot_type`` or the dim names; never from dims alone).

Fields left out of a written mapping take the format's own names (:data:`FORMAT_KEYS`):
``observation.state``/``action`` for LeRobot, ``steps/observation/state``/``steps/action``
for RLDS. README.md documents every field with an example per format.

``extra["channel_order"]`` (optional) maps a camera's source key to ``"rgb"`` or ``"bgr"``,
for sources that store blue first (frames written by OpenCV); decoding then swaps the
channels (:func:`curation.frames.to_rgb8`). Keys not listed are RGB.
``extra["pixel_range"]`` (optional) maps a camera's source key to ``[lo, hi]``, the range its
pixel values span (a 12-bit camera in uint16: ``[0, 4095]``; a float camera in [-1, 1]);
decoding maps it linearly onto 0..255 and rejects values outside it. Keys not listed are
read by their dtype's convention.

``actions`` (default true) set to ``false`` drops the source's actions: its episodes are
curated as action-free video (:mod:`schemas.episode`), for unlabelled robot video or for
pretraining on a dataset's video alone. The readers read the source as usual (its state and
action keys still have to make sense where the format needs them) and ingest drops the
actions and the state after reading; raw video then needs no per-step table at all.
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
# Key names each format's own documentation uses: the defaults of ``state_key``/``action_key``
# in a mapping read for that format (a field left out means the format's name, not LeRobot's).
FORMAT_KEYS: dict[str, dict[str, str]] = {
    "lerobot_v3": {"state_key": "observation.state", "action_key": "action"},
    "lerobot_v2": {"state_key": "observation.state", "action_key": "action"},
    "rlds": {"state_key": "steps/observation/state", "action_key": "steps/action"},
}


@dataclass(frozen=True)
class SourceMapping:
    embodiment: str
    cameras: dict[str, str]  # source key -> camera role
    state_key: str = "observation.state"
    action_key: str = "action"
    instruction: str = ""  # fallback instruction when the source has none
    source: str = ""  # dataset name used in episode ids and lineage
    extra: dict[str, Any] = field(default_factory=dict)
    actions: bool = True  # False: the episodes are curated as action-free video

    def validate(self, where: str = "SourceMapping") -> SourceMapping:
        if not isinstance(self.actions, bool):
            raise SchemaError(where, "actions", f"must be true or false, got {self.actions!r}")
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
        data = asdict(self)
        if self.actions:  # the default stays out, so mappings written before the field read the same
            del data["actions"]
        return data

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], where: str = "SourceMapping", fmt: str | None = None
    ) -> SourceMapping:
        """A mapping from JSON fields; ``fmt`` gives the defaults of the keys left out."""
        if not isinstance(data, dict):
            raise SchemaError(where, "<mapping>", f"expected a JSON object, got {type(data).__name__}")
        allowed = {
            "embodiment",
            "cameras",
            "state_key",
            "action_key",
            "instruction",
            "source",
            "extra",
            "actions",
        }
        unknown = set(data) - allowed
        if unknown:
            raise SchemaError(where, sorted(unknown)[0], f"unknown field; allowed: {sorted(allowed)}")
        if "embodiment" not in data:
            raise SchemaError(where, "embodiment", "missing")
        return cls(**{"cameras": {}, **FORMAT_KEYS.get(fmt or "", {}), **data}).validate(where)

    def write(self, root: str | Path) -> Path:
        path = self.sidecar_path(root)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @staticmethod
    def sidecar_path(root: str | Path) -> Path:
        """Where the mapping of ``root`` is stored: ``<folder>/gwp_source.json`` or ``<file>.gwp_source.json``."""
        root = Path(root)
        return root / SIDECAR_NAME if root.is_dir() else Path(str(root) + "." + SIDECAR_NAME)

    @classmethod
    def for_source(cls, root: str | Path, fmt: str, embodiment: str | None = None) -> SourceMapping:
        """The mapping stored beside ``root``, else the one its format's conventions give
        (``embodiment``: the robot named by the user, for the conventions)."""
        path = cls.sidecar_path(root)
        if path.exists():
            return cls.from_dict(json.loads(path.read_text()), where=str(path), fmt=fmt)
        if fmt in FORMAT_KEYS:
            from curation.formats.conventions import default_mapping

            return default_mapping(root, fmt, embodiment)
        raise SchemaError(
            "SourceMapping",
            "<source>",
            f"{root}: no mapping for this {fmt} source; pass one in the config or write {path} "
            f"(`gwp inspect {root}` prints a starter)",
        )
