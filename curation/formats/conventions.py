"""Default mappings for sources that follow their format's own naming conventions.

A LeRobot dataset (v2.1 or v3.0) or an RLDS folder that uses the names its format
documents needs no ``gwp_source.json``: :func:`default_mapping` reads its metadata and
builds the :class:`~curation.formats.mapping.SourceMapping` a person would have written.

* **keys** — LeRobot: state ``observation.state``, action ``action``, cameras the
  ``observation.images.<name>`` video features. RLDS: state ``steps/observation/state``,
  action ``steps/action``, cameras the image features ``steps/observation/image*``.
* **camera roles** — a camera name maps to a role of the embodiment by :data:`ROLE_ALIASES`
  (``top``/``cam_high``/``overhead`` -> ``high``, ``hand``/``cam_wrist`` -> ``wrist`` …)
  after dropping ``cam_``/``camera_`` prefixes and ``_image``/``_rgb``/``_cam`` suffixes.
  A camera whose role the embodiment lacks, or whose role is taken, is skipped with a
  notice; a source where no camera maps is an error (``no_camera``).
* **embodiment** — in order: the one named by the caller (``--embodiment``, the config's
  source entry); the registered spec named like the dataset's ``robot_type`` (or, without
  one, like the dataset) when its dims match; the one registered spec whose state and
  action names *and* dims equal the dataset's. Dims alone never pick a robot: two robots
  with 7-dim actions are common, and a wrong guess trains silently on wrong semantics.
* **unknown robot** — a spec is generated from the features (state/action dims and names,
  camera roles, ``fps`` as control rate) and saved as ``<name>.json`` in the first folder
  of ``$GWP_EMBODIMENT_PATH``, else in the user folder (``schemas.user_embodiment_folder``),
  where every later run — and every Ray worker on the machine — finds it by name, and the
  user can edit it. Its action dims are ``absolute`` (used as given) unless the action dim
  has the name of a state dim and is not a gripper: then it is a joint target of that
  state and trained as ``delta``, like the registered joint-space robots. A notice line
  says it was generated and where it lives.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from curation.formats.mapping import FORMAT_KEYS, SourceMapping
from schemas import CAMERA_ROLES, EmbodimentSpec, SchemaError, get_embodiment, list_embodiments
from schemas.errors import LoadError

LEROBOT_FORMATS = ("lerobot_v3", "lerobot_v2")
LEROBOT_CAMERA_PREFIX = "observation.images."
RLDS_CAMERA_PREFIX = "steps/observation/"

# RLDS stores no control rate; a generated spec's control_hz is then this, for the user to edit
# (episodes keep their own episode_metadata/fps where the writer stored one).
RLDS_PLACEHOLDER_HZ = 10.0

# Camera name (normalised, see camera_role) -> canonical role.
ROLE_ALIASES: dict[str, str] = {
    **{r: r for r in CAMERA_ROLES},
    "top": "high",
    "overhead": "high",
    "main": "high",
    "image": "high",  # RLDS / Open X-Embodiment name of the main camera
    "agentview": "high",
    "bottom": "low",
    "hand": "wrist",
    "eye_in_hand": "wrist",
    "robot0_eye_in_hand": "wrist",
    "gripper": "wrist",
    "wrist_left": "left_wrist",
    "left_hand": "left_wrist",
    "wrist_right": "right_wrist",
    "right_hand": "right_wrist",
    "laptop": "side",
    "phone": "side",
}
_PREFIXES = ("cam_", "camera_")
_SUFFIXES = ("_image", "_img", "_rgb", "_camera", "_cam")
# Free roles a generated spec gives cameras no alias places, in this order.
_SPARE_ROLES = ("high", "side", "low")
_NOTICED: set[str] = set()


def notice(message: str) -> None:
    """One line on stderr, once per process (a reader is opened again in every worker)."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"gwp: {message}", file=sys.stderr)


def camera_role(name: str) -> str | None:
    """The canonical role a camera called ``name`` plays (``cam_high`` -> ``high``), or None."""
    n = name.lower().replace("-", "_").replace(".", "_")
    if n in ROLE_ALIASES:
        return ROLE_ALIASES[n]
    for prefix in _PREFIXES:
        n = n.removeprefix(prefix)
    for suffix in _SUFFIXES:
        n = n.removesuffix(suffix)
    return ROLE_ALIASES.get(n)


def map_cameras(names: dict[str, str], roles: tuple[str, ...], where: str) -> dict[str, str]:
    """Source key -> role for the cameras (``names``: source key -> camera name) whose role
    the embodiment has; each role once, first key wins; the rest skipped with a notice."""
    out: dict[str, str] = {}
    for key, name in names.items():
        role = camera_role(name)
        if role is None:
            notice(f"{where}: camera {key!r} skipped (its name means no known role)")
        elif role in out.values():
            notice(f"{where}: camera {key!r} skipped (role {role!r} already taken)")
        elif role not in roles:
            notice(f"{where}: camera {key!r} skipped (role {role!r} not among {list(roles)})")
        else:
            out[key] = role
    return out


# ---- embodiment -------------------------------------------------------------------------------


def spec_name(text: str) -> str:
    """An embodiment name from a robot_type or folder name (lower case, ``[a-z0-9_]``)."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "robot"


def _dims_match(spec: EmbodimentSpec, state_dim: int, action_dim: int) -> bool:
    return spec.state_dim == state_dim and spec.action_dim == action_dim


def resolve_embodiment(
    *,
    embodiment: str | None,
    name: str,
    state_dim: int,
    action_dim: int,
    state_names: list[str] | None,
    action_names: list[str] | None,
    where: Path,
) -> EmbodimentSpec | None:
    """The registered spec for this source (see the module docstring), or None if none fits."""
    if embodiment:
        try:
            return get_embodiment(embodiment)
        except KeyError as err:
            raise LoadError("unknown_embodiment", err.args[0], where) from None
    try:
        named = get_embodiment(name)
    except KeyError:
        named = None
    if named is not None:
        if _dims_match(named, state_dim, action_dim):
            return named
        raise LoadError(
            "embodiment_mismatch",
            f"robot {name!r} is registered with state/action dims {named.state_dim}/{named.action_dim}, "
            f"the dataset has {state_dim}/{action_dim}; pass --embodiment or write a gwp_source.json",
            where,
        )
    if state_names and action_names:
        by_names = [
            spec
            for spec in map(get_embodiment, list_embodiments())
            if list(spec.state_names) == state_names and list(spec.action_names) == action_names
        ]
        if len(by_names) == 1:
            return by_names[0]
    return None


def _dim_names(feature: dict[str, Any], dim: int, stem: str) -> tuple[list[str], bool]:
    """The feature's per-dim names (LeRobot ``names``: a list, or ``{"motors": [...]}``), and
    whether the dataset gave them; ``<stem>_<i>`` where it did not."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if (
        isinstance(names, list)
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == dim == len(names)
    ):
        return list(names), True
    return [f"{stem}_{i}" for i in range(dim)], False


def _action_dim(name: str, state_names: list[str]) -> dict[str, Any]:
    if name in state_names and "gripper" not in name.lower():
        return {"name": name, "mode": "delta", "state": name}
    return {"name": name, "mode": "absolute", "state": None}


def generated_spec_path(name: str) -> Path:
    from schemas.embodiment import user_embodiment_folder

    folders = [p for p in os.environ.get("GWP_EMBODIMENT_PATH", "").split(os.pathsep) if p]
    return (Path(folders[0]) if folders else user_embodiment_folder()) / f"{name}.json"


def generate_spec(
    *,
    name: str,
    fps: float,
    camera_names: dict[str, str],
    state_names: list[str],
    action_names: list[str],
    where: Path,
) -> tuple[EmbodimentSpec, dict[str, str]]:
    """A new spec for an unknown robot, saved where the registry finds it; and key -> role."""
    from schemas.embodiment import register_embodiment

    roles: dict[str, str] = {}
    for key, cam in camera_names.items():
        role = camera_role(cam)
        if role is None or role in roles.values():
            role = next((r for r in _SPARE_ROLES if r not in roles.values()), None)
        if role is None:
            notice(f"{where}: camera {key!r} skipped (no free role for a generated spec)")
            continue
        roles[key] = role
    if not roles:
        raise LoadError("no_camera", f"no camera feature to map; found {list(camera_names) or 'none'}", where)
    taken = _taken_ids()
    data = {
        "name": name,
        "id": min(set(range(len(taken) + 1)) - taken),
        "control_hz": float(fps),
        "description": (
            f"Generated from the features of {where} (edit freely). Action dims are absolute "
            "unless named like a non-gripper state dim, then delta against it."
        ),
        "cameras": [r for r in CAMERA_ROLES if r in roles.values()],
        "state_names": state_names,
        "action_dims": [_action_dim(n, state_names) for n in action_names],
    }
    try:
        spec = EmbodimentSpec.from_dict(data)
    except SchemaError as err:
        raise LoadError("bad_embodiment", f"cannot generate a spec: {err}", where) from err
    path = generated_spec_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x") as f:  # never overwrite a spec the user may have edited
            f.write(json.dumps(spec.to_dict(), indent=2) + "\n")
    except FileExistsError:
        return get_embodiment(name), roles
    register_embodiment(spec)
    notice(f"{where}: unknown robot; generated embodiment {name!r} from its features, saved to {path}")
    return spec, roles


# ---- per format -------------------------------------------------------------------------------


def _taken_ids() -> set[int]:
    """Ids of the registered specs and of every spec file now in the folders: another process
    may have saved one since this one loaded the registry, and ids must stay unique."""
    from schemas.embodiment import embodiment_folders

    taken = {get_embodiment(n).id for n in list_embodiments()}
    for file in (f for folder in embodiment_folders() for f in folder.glob("*.json")):
        try:
            taken.add(int(json.loads(file.read_text())["id"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken file is reported by the registry when it loads it
    return taken


def default_mapping(
    root: str | Path, fmt: str, embodiment: str | None = None, *, need_camera: bool = True
) -> SourceMapping:
    """The mapping of a convention-following source, resolved as the module docstring says.
    ``need_camera=False`` (``gwp inspect``'s starter) leaves ``cameras`` empty where none maps."""
    root = Path(root)
    if fmt in LEROBOT_FORMATS:
        return _lerobot_mapping(root, fmt, embodiment, need_camera)
    if fmt == "rlds":
        return _rlds_mapping(root, embodiment, need_camera)
    raise ValueError(f"{fmt} has no naming conventions to map by; its sources need a mapping")


def _mapping_for(
    *,
    root: Path,
    fmt: str,
    embodiment: str | None,
    name: str,
    fps: float,
    cameras: dict[str, str],
    state: tuple[str, dict[str, Any]],
    action: tuple[str, dict[str, Any]],
    where: Path,
    need_camera: bool,
) -> SourceMapping:
    """Shared by the formats: ``cameras`` source key -> camera name, ``state``/``action``
    (key, feature with ``shape`` and maybe ``names``)."""
    dims = []
    for key, feat in (state, action):
        shape = [int(d) for d in feat.get("shape") or []]
        if len(shape) != 1 or shape[0] < 1:
            raise LoadError("bad_shape", f"{key} must be a vector, has shape {shape}", where)
        dims.append(shape[0])
    state_names, have_state = _dim_names(state[1], dims[0], "state")
    action_names, have_action = _dim_names(action[1], dims[1], "action")
    spec = resolve_embodiment(
        embodiment=embodiment,
        name=name,
        state_dim=dims[0],
        action_dim=dims[1],
        state_names=state_names if have_state else None,
        action_names=action_names if have_action else None,
        where=where,
    )
    if spec is not None:
        roles = map_cameras(cameras, spec.cameras, str(root))
        if not roles and need_camera:
            raise LoadError(
                "no_camera",
                f"no camera of {list(cameras) or 'none'} maps to a role of {spec.name} {list(spec.cameras)}; "
                "write a gwp_source.json (`gwp inspect` prints a starter)",
                where,
            )
    else:
        spec, roles = generate_spec(
            name=name,
            fps=fps,
            camera_names=cameras,
            state_names=state_names,
            action_names=action_names,
            where=root,
        )
    return SourceMapping(
        embodiment=spec.name,
        cameras=roles,
        state_key=state[0],
        action_key=action[0],
        extra={"conventions": fmt},
    ).validate(str(where))


def _lerobot_mapping(root: Path, fmt: str, embodiment: str | None, need_camera: bool) -> SourceMapping:
    from curation.formats.lerobot_meta import INFO_PATH, read_info

    info = read_info(root, "v3" if fmt == "lerobot_v3" else "v2")
    where = root / INFO_PATH
    features = info["features"]
    keys = FORMAT_KEYS[fmt]
    for key in keys.values():
        if key not in features:
            raise LoadError(
                "missing_column",
                f"no {key!r} feature: not a LeRobot-convention dataset; write a gwp_source.json "
                "(`gwp inspect` prints a starter)",
                where,
            )
    cameras = {}
    for key, feat in features.items():
        if key.startswith(LEROBOT_CAMERA_PREFIX):
            if feat.get("dtype") == "video":
                cameras[key] = key[len(LEROBOT_CAMERA_PREFIX) :]
            else:
                notice(f"{root}: camera {key!r} skipped (dtype {feat.get('dtype')!r}; only video is read)")
    robot_type = str(info.get("robot_type") or "")
    name = spec_name(robot_type if robot_type and robot_type != "unknown" else root.name)
    return _mapping_for(
        root=root,
        fmt=fmt,
        embodiment=embodiment,
        name=name,
        fps=float(info["fps"]),
        cameras=cameras,
        state=(keys["state_key"], features[keys["state_key"]]),
        action=(keys["action_key"], features[keys["action_key"]]),
        where=where,
        need_camera=need_camera,
    )


def _rlds_mapping(root: Path, embodiment: str | None, need_camera: bool) -> SourceMapping:
    from curation.formats.rlds_layout import DATASET_INFO, FEATURES_JSON, parse_features, version_folder

    folder = version_folder(root) or root
    where = folder / FEATURES_JSON
    if not where.exists():
        raise LoadError("missing_file", f"no {FEATURES_JSON}: cannot tell the keys without a mapping", where)
    try:
        leaves = parse_features(json.loads(where.read_text()), str(where))
        info = json.loads((folder / DATASET_INFO).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LoadError("bad_metadata", f"cannot read: {err}", where) from err
    keys = FORMAT_KEYS["rlds"]
    for key in keys.values():
        if key not in leaves or leaves[key].kind != "tensor":
            raise LoadError("missing_key", f"no tensor feature {key!r}; write a gwp_source.json", where)
    cameras = {
        key: key[len(RLDS_CAMERA_PREFIX) :]
        for key, leaf in leaves.items()
        if leaf.kind == "image"
        and key.startswith(RLDS_CAMERA_PREFIX)
        and (key[len(RLDS_CAMERA_PREFIX) :].startswith("image") or key.endswith("_image"))
    }
    name = spec_name(str(info.get("name") or folder.parent.name))

    def feature(key: str) -> dict[str, Any]:
        return {"shape": [d or 0 for d in leaves[key].shape]}

    return _mapping_for(
        root=folder,
        fmt="rlds",
        embodiment=embodiment,
        name=name,
        fps=RLDS_PLACEHOLDER_HZ,
        cameras=cameras,
        state=(keys["state_key"], feature(keys["state_key"])),
        action=(keys["action_key"], feature(keys["action_key"])),
        where=where,
        need_camera=need_camera,
    )
