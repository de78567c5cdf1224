"""``gwp inspect`` — what a source holds, and a starter mapping for it.

    gwp inspect data/my_lerobot_dataset              # format, keys, cameras, fps, episodes + mapping
    gwp inspect data/demo.hdf5 --embodiment franka_robomimic --write   # save it as the sidecar
    gwp inspect data/rlds --json                     # one JSON object: {"source": …, "mapping": …}

Detects the format (as ``gwp ingest`` does), lists every key with its shape and dtype
(metadata only: LeRobot ``meta/info.json``, RLDS ``features.json``, the first HDF5 episode,
the raw-video sidecars) and prints a starter :class:`~curation.formats.mapping.SourceMapping`
as JSON. For LeRobot and RLDS it is exactly the mapping ingest derives from the format's
conventions (:mod:`curation.formats.conventions`; an unknown robot's spec is generated and
saved just as ingest would, so the starter names a registered robot); for HDF5 and raw video the cameras are
mapped by name, state/action keys by the format's usual names, and the embodiment is
``--embodiment`` or the first registered one with the same state/action dims — a guess to
review, which is why those formats never read without a written mapping. ``--write`` saves
the starter where the reader looks for it (``gwp_source.json`` / ``<file>.gwp_source.json``),
never over an existing one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from curation.formats import LoadError, SourceMapping, detect_format
from curation.formats.conventions import FORMAT_KEYS, default_mapping, map_cameras
from pipelines.usage import ArgumentParser, JobFailed, command, existing_path
from schemas import get_embodiment, list_embodiments


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp inspect", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a source folder or file (format auto-detected)")
    p.add_argument("--format", default=None, help="force the format instead of detecting it")
    p.add_argument("--embodiment", default=None, help="the robot to map onto (default: inferred)")
    p.add_argument("--write", action="store_true", help="save the starter mapping as the source's sidecar")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the listing")
    return p


# ---- what a source holds: {"keys": [{key, shape, dtype, kind}], cameras, fps, robot_type, episodes}


def _key(key: str, shape: Any, dtype: str, kind: str) -> dict[str, Any]:
    return {
        "key": key,
        "shape": [int(d) if d is not None else None for d in shape],
        "dtype": dtype,
        "kind": kind,
    }


def describe_lerobot(root: Path, fmt: str) -> dict[str, Any]:
    from curation.formats.lerobot_meta import read_info

    info = read_info(root, "v3" if fmt == "lerobot_v3" else "v2")
    keys = []
    for key, feat in info["features"].items():
        dtype = str(feat.get("dtype"))
        kind = (
            "camera"
            if dtype in ("video", "image")
            else "vector"
            if key in FORMAT_KEYS[fmt].values()
            else "other"
        )
        keys.append(_key(key, feat.get("shape") or [], dtype, kind))
    return {
        "keys": keys,
        "fps": info["fps"],
        "robot_type": info.get("robot_type"),
        "episodes": info.get("total_episodes"),
    }


def describe_rlds(root: Path) -> dict[str, Any]:
    from curation.formats.rlds_layout import DATASET_INFO, FEATURES_JSON, parse_features, version_folder

    folder = version_folder(root) or root
    leaves = parse_features(json.loads((folder / FEATURES_JSON).read_text()), str(folder / FEATURES_JSON))
    info = json.loads((folder / DATASET_INFO).read_text())
    split = next((s for s in info.get("splits", []) if s.get("name") == "train"), {})
    keys = [
        _key(k, leaf.shape, leaf.dtype, "camera" if leaf.kind == "image" else leaf.kind)
        for k, leaf in leaves.items()
    ]
    episodes = sum(int(n) for n in split.get("shardLengths", [])) if split else None
    return {"keys": keys, "fps": None, "robot_type": info.get("name"), "episodes": episodes}


def _hdf5_keys(group, prefix: str = "") -> list[dict[str, Any]]:
    import h5py

    out = []
    for name, node in group.items():
        path = f"{prefix}/{name}" if prefix else name
        if isinstance(node, h5py.Group):
            out += _hdf5_keys(node, path)
        else:
            image = node.dtype == "uint8" and node.ndim == 4 and node.shape[-1] == 3
            out.append(_key(path, node.shape, str(node.dtype), "camera" if image else "vector"))
    return out


def describe_robomimic(root: Path) -> dict[str, Any]:
    from curation.formats.hdf5_common import open_hdf5

    with open_hdf5(root) as f:
        demos = sorted(k for k in f["data"] if k.startswith("demo_"))
        keys = _hdf5_keys(f["data"][demos[0]]) if demos else []
        env = json.loads(f["data"].attrs.get("env_args", "{}") or "{}")
    fps = (env.get("env_kwargs") or {}).get("control_freq")
    return {"keys": keys, "fps": fps, "robot_type": env.get("env_name"), "episodes": len(demos)}


def describe_aloha(root: Path) -> dict[str, Any]:
    from curation.formats.hdf5_aloha import _episode_files
    from curation.formats.hdf5_common import open_hdf5

    files = [p for _, p in _episode_files(root)] if root.is_dir() else [root]
    with open_hdf5(files[0]) as f:
        keys = [{**k, "key": "/" + k["key"]} for k in _hdf5_keys(f)]
        fps = f.attrs.get("gwp_fps")
    for k in keys:  # compressed ALOHA files keep one JPEG row per frame: still a camera
        if k["key"].startswith("/observations/images/"):
            k["kind"] = "camera"
    return {"keys": keys, "fps": float(fps) if fps else None, "robot_type": None, "episodes": len(files)}


def describe_raw_video(root: Path) -> dict[str, Any]:
    from curation.formats.raw_video import _sidecar_stems

    stems = _sidecar_stems(root)
    cams = sorted({p.name[len(s) + 1 : -len(".mp4")] for s in stems for p in root.glob(f"{s}.*.mp4")})
    keys = [_key(c, [], "video", "camera") for c in cams]
    first = root / f"{stems[0]}.json" if stems else None
    side = json.loads(first.read_text()) if first and first.exists() else {}
    for name in ("state", "action"):
        if side.get(name):
            keys.append(_key(name, [len(side[name][0])], "float", "vector"))  # per step
    return {
        "keys": keys,
        "fps": side.get("fps"),
        "robot_type": side.get("embodiment"),
        "episodes": len(stems),
    }


def describe(root: Path, fmt: str) -> dict[str, Any]:
    if fmt in ("lerobot_v3", "lerobot_v2"):
        out = describe_lerobot(root, fmt)
    else:
        out = {
            "rlds": describe_rlds,
            "hdf5_robomimic": describe_robomimic,
            "hdf5_aloha": describe_aloha,
            "raw_video": describe_raw_video,
        }[fmt](root)
    out["cameras"] = [k["key"] for k in out["keys"] if k["kind"] == "camera"]
    return {"source": str(root), "format": fmt, **out}


# ---- the starter mapping -------------------------------------------------------------------------


def _dims(desc: dict[str, Any], key: str) -> int | None:
    shape = next((k["shape"] for k in desc["keys"] if k["key"] == key), None)
    return int(shape[-1]) if shape else None


def _by_dims(embodiment: str | None, state_dim: int | None, action_dim: int | None) -> str:
    """``embodiment`` if given, else the first registered robot with these dims (a guess to review)."""
    if embodiment:
        return get_embodiment(embodiment).name
    for name in list_embodiments():
        spec = get_embodiment(name)
        if (spec.state_dim, spec.action_dim) == (state_dim, action_dim):
            print(f"gwp inspect: embodiment {name!r} chosen by its dims only: check it", file=sys.stderr)
            return name
    raise LoadError(
        "unknown_embodiment",
        f"no registered embodiment has state/action dims {state_dim}/{action_dim}: pass --embodiment "
        f"(registered: {list_embodiments()}) or add a spec (schemas/embodiments, $GWP_EMBODIMENT_PATH)",
        "--embodiment",
    )


def starter_mapping(root: Path, fmt: str, desc: dict[str, Any], embodiment: str | None) -> SourceMapping:
    if fmt in FORMAT_KEYS:  # the conventions' own mapping: what ingest reads without a sidecar
        mapping = default_mapping(root, fmt, embodiment, need_camera=False)
        if not mapping.cameras:
            print(
                f"gwp inspect: no camera name maps to a role of {mapping.embodiment}: fill in cameras",
                file=sys.stderr,
            )
        return SourceMapping.from_dict({**mapping.to_dict(), "extra": {}}, fmt=fmt)
    cams = {k: k.rsplit("/", 1)[-1] for k in desc["cameras"]}
    if fmt == "hdf5_robomimic":
        cams = {k.removeprefix("obs/"): n for k, n in cams.items()}
        low = [k["key"].removeprefix("obs/") for k in desc["keys"] if k["key"].startswith("obs/")]
        low = [k for k in low if k not in cams]
        usual = [k for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos") if k in low]
        state = usual or low
        state_dim = sum(_dims(desc, f"obs/{k}") or 1 for k in state)
        keys = {"state_key": ",".join(state), "action_key": "actions"}
        name = _by_dims(embodiment, state_dim, _dims(desc, "actions"))
    elif fmt == "hdf5_aloha":
        keys = {"state_key": "/observations/qpos", "action_key": "/action"}
        name = _by_dims(embodiment, _dims(desc, keys["state_key"]), _dims(desc, keys["action_key"]))
    else:  # raw video: keys that are roles need no entry; the sidecars name the robot
        keys = {}
        name = (
            embodiment
            or desc.get("robot_type")
            or _by_dims(None, _dims(desc, "state"), _dims(desc, "action"))
        )
        cams = {k: n for k, n in cams.items() if k not in get_embodiment(name).cameras}
    spec = get_embodiment(name)
    cameras = map_cameras(cams, spec.cameras, str(root)) if cams else {}
    if fmt != "raw_video" and not cameras:
        print(
            f"gwp inspect: no camera maps to {spec.name}'s roles {list(spec.cameras)}: fill in cameras",
            file=sys.stderr,
        )
    return SourceMapping(embodiment=name, cameras=cameras, **keys)


def _listing(desc: dict[str, Any]) -> str:
    lines = [
        f"source:     {desc['source']}",
        f"format:     {desc['format']}",
        f"episodes:   {desc['episodes']}",
        f"fps:        {desc['fps']}",
        f"robot_type: {desc['robot_type']}",
        f"cameras:    {', '.join(desc['cameras']) or 'none'}",
        "keys:",
    ]
    width = max((len(k["key"]) for k in desc["keys"]), default=0)
    lines += [f"  {k['key']:<{width}}  {k['kind']:<7} {k['dtype']:<8} {k['shape']}" for k in desc["keys"]]
    return "\n".join(lines)


@command("gwp inspect")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.embodiment:
        get_embodiment(args.embodiment)  # a misspelt robot: the registry's did-you-mean, exit 2
    root = existing_path("source", args.source)
    try:
        fmt = args.format or detect_format(root)
        desc = describe(root, fmt)
        mapping = starter_mapping(root, fmt, desc, args.embodiment)
    except (LoadError, KeyError, OSError, ValueError) as err:  # the source itself cannot be read
        raise JobFailed(err.args[0] if isinstance(err, KeyError) else str(err)) from err
    sidecar = SourceMapping.sidecar_path(_sidecar_root(root, fmt))
    if args.json:
        print(json.dumps({"source": desc, "mapping": mapping.to_dict(), "sidecar": str(sidecar)}, indent=2))
    else:
        print(_listing(desc))
        print(f"starter mapping (for {sidecar}):")
        print(json.dumps(mapping.to_dict(), indent=2))
    if args.write:
        if sidecar.exists():
            raise JobFailed(f"{sidecar} exists; not overwritten (remove it to write a new one)")
        mapping.write(_sidecar_root(root, fmt))
        print(f"wrote {sidecar}", file=sys.stderr)
    return 0


def _sidecar_root(root: Path, fmt: str) -> Path:
    if fmt == "rlds":
        from curation.formats.rlds_layout import version_folder

        return version_folder(root) or root
    return root


if __name__ == "__main__":
    sys.exit(main())
