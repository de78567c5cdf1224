"""Embodiment specs and their registry.

An :class:`EmbodimentSpec` says what a robot's state and action vectors mean, which camera
roles it has and how each action dimension is trained:

* ``delta``    — trained as ``action - state[<state dim>]`` (joint-position targets), the
  current state added back at inference;
* ``absolute`` — used as given (grippers, end-effector displacement commands).

Robots are registered by *data*: every ``*.json`` file in ``schemas/embodiments/``, in
the folders listed in ``$GWP_EMBODIMENT_PATH`` (``os.pathsep``-separated) and in the user
folder (``$XDG_CONFIG_HOME/gwp/embodiments``, where specs generated for unknown robots are
saved) is one spec. A name not found is looked for again in those folders before failing,
so a spec saved by another process (a reader generating one) is seen without a restart.
All action and state vectors are padded to ``MAX_DIM`` = 32 for the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from schemas.checks import require_choice, require_int, require_positive, require_str
from schemas.errors import SchemaError
from schemas.registry import Registry

MAX_DIM = 32
ACTION_MODES = ("delta", "absolute")
# Canonical camera roles. Composition (curation) puts `high` on top and the wrist views
# side by side below it; a single-arm robot's `wrist` takes the left slot.
CAMERA_ROLES = ("high", "low", "left_wrist", "right_wrist", "wrist", "side")

_RECORD = "EmbodimentSpec"


@dataclass(frozen=True)
class ActionDim:
    """One action dimension: its name, its mode and, for deltas, the state dim it is relative to."""

    name: str
    mode: str = "absolute"
    state: str | None = None


@dataclass(frozen=True)
class EmbodimentSpec:
    name: str
    id: int
    control_hz: float
    cameras: tuple[str, ...]
    state_names: tuple[str, ...]
    action_dims: tuple[ActionDim, ...]
    description: str = ""

    # ---- derived views -------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return len(self.action_dims)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.action_dims)

    def delta_state_index(self) -> list[int]:
        """For each action dim, the index of its reference state dim, or -1 if absolute."""
        index = {n: i for i, n in enumerate(self.state_names)}
        return [index[d.state] if d.mode == "delta" else -1 for d in self.action_dims]

    # ---- validation and (de)serialisation -----------------------------------------
    def validate(self) -> EmbodimentSpec:
        require_str(_RECORD, "name", self.name)
        require_int(_RECORD, "id", self.id, minimum=0)
        require_positive(_RECORD, "control_hz", self.control_hz)
        if not self.cameras:
            raise SchemaError(_RECORD, "cameras", "at least one camera role is required")
        for role in self.cameras:
            require_choice(_RECORD, "cameras", role, CAMERA_ROLES)
        if len(set(self.cameras)) != len(self.cameras):
            raise SchemaError(_RECORD, "cameras", f"duplicate role in {list(self.cameras)}")
        for field, names in (("state_names", self.state_names), ("action_dims", self.action_names)):
            if not 1 <= len(names) <= MAX_DIM:
                raise SchemaError(_RECORD, field, f"needs 1..{MAX_DIM} dims, got {len(names)}")
            if len(set(names)) != len(names):
                raise SchemaError(_RECORD, field, f"duplicate dimension name in {list(names)}")
        for d in self.action_dims:
            require_choice(_RECORD, f"action_dims[{d.name}].mode", d.mode, ACTION_MODES)
            if d.mode == "delta" and d.state not in self.state_names:
                raise SchemaError(
                    _RECORD,
                    f"action_dims[{d.name}].state",
                    f"a delta dim needs a reference state dim from {list(self.state_names)}, got {d.state!r}",
                )
        return self

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "id": self.id,
            "control_hz": float(self.control_hz),
            "cameras": list(self.cameras),
            "state_names": list(self.state_names),
            "action_dims": [{"name": d.name, "mode": d.mode, "state": d.state} for d in self.action_dims],
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EmbodimentSpec:
        known = {"name", "id", "control_hz", "cameras", "state_names", "action_dims", "description"}
        unknown = set(data) - known
        if unknown:
            raise SchemaError(_RECORD, sorted(unknown)[0], f"unknown field; allowed: {sorted(known)}")
        missing = known - {"description"} - set(data)
        if missing:
            raise SchemaError(_RECORD, sorted(missing)[0], "missing")
        dims = []
        for i, d in enumerate(data["action_dims"]):
            if isinstance(d, str):
                d = {"name": d}
            if not isinstance(d, dict) or "name" not in d:
                raise SchemaError(_RECORD, f"action_dims[{i}]", "expected {name, mode, state}")
            dims.append(ActionDim(d["name"], d.get("mode", "absolute"), d.get("state")))
        return cls(
            name=data["name"],
            id=data["id"],
            control_hz=data["control_hz"],
            cameras=tuple(data["cameras"]),
            state_names=tuple(data["state_names"]),
            action_dims=tuple(dims),
            description=data.get("description", ""),
        ).validate()

    def to_row(self) -> dict:
        return self.to_dict()

    @classmethod
    def from_row(cls, row: dict) -> EmbodimentSpec:
        return cls.from_dict(row)

    @staticmethod
    def arrow_schema() -> pa.Schema:
        dim = pa.struct([("name", pa.string()), ("mode", pa.string()), ("state", pa.string())])
        return pa.schema(
            [
                ("name", pa.string()),
                ("id", pa.int32()),
                ("control_hz", pa.float64()),
                ("cameras", pa.list_(pa.string())),
                ("state_names", pa.list_(pa.string())),
                ("action_dims", pa.list_(dim)),
                ("description", pa.string()),
            ]
        )


# ---- registry -----------------------------------------------------------------------
_BUILTIN_DIR = Path(__file__).with_name("embodiments")
_REGISTRY: Registry[EmbodimentSpec] = Registry("embodiment")


def register_embodiment(spec: EmbodimentSpec, *, replace: bool = False) -> EmbodimentSpec:
    """Add ``spec``; a second spec with the same name or id is an error unless identical."""
    spec.validate()
    old = _REGISTRY.get(spec.name) if spec.name in _REGISTRY else None
    if old is not None and old != spec and not replace:
        raise SchemaError(_RECORD, "name", f"{spec.name!r} is already registered differently")
    for other in _REGISTRY.values():
        if other.id == spec.id and other.name != spec.name:
            raise SchemaError(_RECORD, "id", f"id {spec.id} is already used by {other.name!r}")
    return _REGISTRY.register(spec.name, spec, replace=True)  # conflicts were checked above


def load_embodiment_file(path: str | os.PathLike) -> EmbodimentSpec:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SchemaError(_RECORD, "<file>", f"{path}: cannot read spec: {err}") from err
    try:
        return EmbodimentSpec.from_dict(data)
    except SchemaError as err:
        raise SchemaError(f"{path}: {_RECORD}", err.field, err.problem) from err


def user_embodiment_folder() -> Path:
    """Where specs generated for unknown robots go when ``$GWP_EMBODIMENT_PATH`` is unset."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "gwp" / "embodiments"


def embodiment_folders() -> list[Path]:
    """The folders whose ``*.json`` files are specs, in load order."""
    folders = [_BUILTIN_DIR]
    folders += [Path(p) for p in os.environ.get("GWP_EMBODIMENT_PATH", "").split(os.pathsep) if p]
    return [*folders, user_embodiment_folder()]


def _ensure_loaded() -> None:
    if _REGISTRY:
        return
    for folder in embodiment_folders():
        for file in sorted(folder.glob("*.json")):
            register_embodiment(load_embodiment_file(file))


def _load_new(name: str) -> None:
    """Register ``<folder>/<name>.json`` if a folder now holds it (saved after the first load)."""
    for folder in embodiment_folders():
        file = folder / f"{name}.json"
        if file.is_file():
            spec = load_embodiment_file(file)
            if spec.name == name:
                register_embodiment(spec)
                return


def get_embodiment(name: str) -> EmbodimentSpec:
    """The registered spec called ``name``; an unknown name suggests the closest ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        _load_new(name)
    return _REGISTRY.get(name)


def embodiment_by_id(embodiment_id: int) -> EmbodimentSpec:
    _ensure_loaded()
    for spec in _REGISTRY.values():
        if spec.id == embodiment_id:
            return spec
    raise KeyError(f"no embodiment with id {embodiment_id} (registered: {list_embodiments()})")


def list_embodiments() -> list[str]:
    _ensure_loaded()
    return _REGISTRY.names()
