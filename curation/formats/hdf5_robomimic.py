"""robomimic HDF5: reader and writer.

Layout (robomimic's documented dataset structure; one file holds every demonstration)::

    data/                          group; attrs: total (int, sum of num_samples),
                                   env_args (JSON: {"env_name", "type", "env_kwargs": {...}})
    data/demo_N/                   group; attrs: num_samples (T)
    data/demo_N/obs/<key>          low-dim [T, d] (robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos…)
                                   or images uint8 [T, H, W, 3] (agentview_image, robot0_eye_in_hand_image…)
    data/demo_N/actions            [T, Da]
    data/demo_N/rewards, dones     [T]
    mask/<filter_key>              1-D array of demo names (bytes), e.g. mask/train, mask/valid

How the reader maps it (a :class:`~curation.formats.mapping.SourceMapping`, from the
config or ``<file>.gwp_source.json`` beside the file):

* ``cameras``    — obs key -> camera role, e.g. ``{"agentview_image": "high",
  "robot0_eye_in_hand_image": "wrist"}``; frames stay in the file as
  ``FrameRef(kind="hdf5", key="data/demo_N/obs/<key>", start=0, stop=T)``.
* ``state_key``  — a comma-separated list of obs keys, concatenated in that order along the
  last axis into ``state [T, Ds]`` (``"robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos"``
  gives the 9-D ``franka_robomimic`` state); 1-D keys count as one column.
* ``action_key`` — the demo dataset holding actions (robomimic: ``"actions"``).
* ``extra``      — ``filter_key``: read only the demos listed in ``mask/<filter_key>``;
  ``fps``: the control rate, overriding the file.

robomimic stores no instruction per demo. Ours is, in order: the demo attribute
``gwp_instruction``, the ``data`` attribute ``gwp_instruction`` (both written by
:func:`write_robomimic_hdf5`; other files simply lack them), then ``mapping.instruction``.
fps is ``mapping.extra["fps"]``, else the demo attribute ``gwp_fps`` (ours), else
``env_args["env_kwargs"]["control_freq"]`` (robosuite writes it there), else the embodiment's
``control_hz``; timestamps are ``arange(T) / fps``.

Unexpected members: every member of ``data`` that is not a ``demo_N`` *group* reached by a
hard link — a dataset named ``demo_N``, a group or dataset with another name, a soft or
external link (never followed: it could repeat a demo or read another file) — is listed as a
ref of its own that fails to load with ``unexpected_member`` naming it, so it reaches the
rejection ledger instead of being skipped or read silently.

Errors are :class:`~curation.formats.base.LoadError` naming the file and ``demo_N``:
``bad_file`` (not HDF5 / no ``data`` group; raised by ``list_episodes``), ``missing_key``,
``length_mismatch`` (images, state, actions or ``num_samples`` disagree on T),
``nan_action`` / ``nan_state``, ``bad_shape`` and ``invalid_episode`` (schema check). Each
demo is loaded on its own, so a bad demo never stops the others.

The writer emits ``obs`` only (no ``next_obs``, no MuJoCo ``states``): enough for the
readers here and for robomimic's loaders with ``hdf5_load_next_obs=False``. ``rewards`` are
zero and ``dones`` is 1 on the last step, since episodes carry no reward signal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curation.formats import hdf5_common as common
from curation.formats.base import EpisodeRef, SourceReader
from curation.formats.episodes import common_embodiment, episode_frames, finish_episode
from curation.formats.mapping import SourceMapping
from schemas import Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError

FORMAT = "hdf5_robomimic"
DATA_GROUP = "data"
MASK_GROUP = "mask"
DEMO_PREFIX = "demo_"
INSTRUCTION_ATTR = "gwp_instruction"
FPS_ATTR = "gwp_fps"
_DEMO_RE = re.compile(r"^demo_(\d+)$")

# Default obs keys per camera role when writing (robomimic / robosuite names where they exist).
DEFAULT_CAMERA_KEYS = {"high": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
# The franka_robomimic state split into robosuite's obs keys.
FRANKA_STATE_KEYS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


# ---- reader ------------------------------------------------------------------------------


def _state_keys(mapping: SourceMapping) -> list[str]:
    keys = [k.strip() for k in mapping.state_key.split(",") if k.strip()]
    if not keys:
        raise SchemaError("SourceMapping", "state_key", "robomimic needs comma-separated obs keys")
    return keys


def _demo_number(name: str) -> int | None:
    m = _DEMO_RE.match(name)
    return int(m.group(1)) if m else None


def _data_members(data: Any) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    """``(sorted (number, name) of the demo_N groups, (member, problem) of everything else)``."""
    import h5py

    demos, unexpected = [], []
    for name in data:
        member = f"{DATA_GROUP}/{name}"
        problem = common.link_problem(data, name)
        if problem is None:
            obj = data.get(name)
            n = _demo_number(name)
            if isinstance(obj, h5py.Group) and n is not None:
                demos.append((n, name))
                continue
            kind = "group" if isinstance(obj, h5py.Group) else "dataset"
            if n is not None:
                problem = f"{member} is a {kind} where a demo group should be"
            else:
                problem = f"{kind} {member} does not match the layout ({DATA_GROUP}/demo_N groups only)"
        unexpected.append((member, problem))
    return sorted(demos), unexpected


class RobomimicReader(SourceReader):
    """Reads one robomimic ``.hdf5`` file; ``root`` is the file."""

    format: ClassVar[str] = FORMAT

    @staticmethod
    def detect(root: Path) -> bool:
        import h5py

        root = Path(root)
        if not root.is_file() or not h5py.is_hdf5(str(root)):
            return False
        try:
            with h5py.File(root, "r") as f:
                data = f.get(DATA_GROUP)
                return isinstance(data, h5py.Group) and any(_demo_number(k) is not None for k in data)
        except OSError:
            return False

    def _fps(self, data: Any, demo: Any) -> float:
        if "fps" in self.mapping.extra:
            return float(self.mapping.extra["fps"])
        if FPS_ATTR in demo.attrs:
            return float(demo.attrs[FPS_ATTR])
        try:
            env_args = json.loads(common.attr_str(data, "env_args") or "{}")
            freq = env_args.get("env_kwargs", {}).get("control_freq")
            if freq:
                return float(freq)
        except (json.JSONDecodeError, AttributeError):
            pass  # env_args is free-form metadata; a malformed one just gives no fps
        return float(get_embodiment(self.mapping.embodiment).control_hz)

    def list_episodes(self) -> list[EpisodeRef]:
        with common.open_hdf5(self.root) as f:
            data = f.get(DATA_GROUP)
            if data is None:
                raise LoadError("bad_file", f"no {DATA_GROUP!r} group: not a robomimic file", self.root)
            demos, unexpected = _data_members(data)
            filter_key = self.mapping.extra.get("filter_key")
            if filter_key:
                mask = f.get(f"{MASK_GROUP}/{filter_key}")
                if mask is None:
                    raise LoadError("missing_key", f"no filter key {MASK_GROUP}/{filter_key}", self.root)
                keep = {m.decode() if isinstance(m, bytes) else str(m) for m in mask[()]}
                demos = [(n, k) for n, k in demos if k in keep]
            instruction = common.attr_str(data, INSTRUCTION_ATTR)
        first_free = max((n for n, _ in demos), default=-1) + 1
        odd = [
            common.unexpected_ref(FORMAT, self.root, self.root, first_free + i, self.source, member, problem)
            for i, (member, problem) in enumerate(unexpected)
        ]
        return [
            EpisodeRef(
                format=FORMAT,
                root=str(self.root),
                path=str(self.root),
                index=n,
                source=self.source,
                locator={"demo": k, "instruction": instruction},
            )
            for n, k in demos
        ] + odd

    def load(self, ref: EpisodeRef) -> Episode:
        import h5py

        common.raise_if_unexpected(ref)
        path = Path(ref.path)
        demo = ref.locator["demo"]
        with common.open_hdf5(path) as f:
            group = f.get(f"{DATA_GROUP}/{demo}")
            if group is None:
                raise LoadError("missing_key", f"no group {DATA_GROUP}/{demo}", path, demo)
            action = common.read_dataset(group, self.mapping.action_key, path, demo)
            fps = self._fps(f[DATA_GROUP], group)
            obs = group.get("obs")
            if obs is None:
                raise LoadError("missing_key", f"no group {DATA_GROUP}/{demo}/obs", path, demo)
            parts = []
            for key in _state_keys(self.mapping):
                part = common.read_dataset(obs, key, path, demo)
                # explicit width: reshape(0, -1) is ambiguous and fails on a zero-length demo
                parts.append(part.reshape(part.shape[0], int(np.prod(part.shape[1:]))))
            lengths = {p.shape[0] for p in parts}
            if len(lengths) != 1:
                raise LoadError(
                    "length_mismatch", f"state obs keys differ in length: {sorted(lengths)}", path, demo
                )
            state = np.concatenate(parts, axis=1)
            cameras: dict[str, FrameRef] = {}
            for key, role in self.mapping.cameras.items():
                ds = obs.get(key)
                if not isinstance(ds, h5py.Dataset):
                    raise LoadError("missing_key", f"no image dataset obs/{key}", path, demo)
                if not common.image_shape_ok(ds.shape):
                    raise LoadError(
                        "bad_shape",
                        f"obs/{key} has shape {ds.shape} ({ds.dtype}), want [T, H, W] or [T, H, W, 1|3|4]",
                        path,
                        demo,
                    )
                cameras[role] = FrameRef(
                    kind="hdf5",
                    path=str(path),
                    key=f"{DATA_GROUP}/{demo}/obs/{key}",
                    start=0,
                    stop=int(ds.shape[0]),
                    fps=fps,
                    channel_order=self.mapping.channel_order(key),
                    pixel_range=self.mapping.pixel_range(key),
                )
            num_samples = group.attrs.get("num_samples")
            if num_samples is not None and int(num_samples) != action.shape[0]:
                raise LoadError(
                    "length_mismatch",
                    f"num_samples={int(num_samples)} but actions has {action.shape[0]}",
                    path,
                    demo,
                )
            instruction = (
                common.attr_str(group, INSTRUCTION_ATTR)
                or ref.locator["instruction"]
                or self.mapping.instruction
            )
        return finish_episode(
            path=path,
            label=demo,
            source=ref.source,
            episode_id=self.episode_id(ref, ".", ref.index),  # the file is the dataset: no name in ids
            index=ref.index,
            embodiment=self.mapping.embodiment,
            instruction=instruction,
            fps=fps,
            state=state,
            action=action,
            cameras=cameras,
        )


# ---- writer ------------------------------------------------------------------------------


def _default_state_keys(embodiment: str) -> dict[str, int]:
    spec = get_embodiment(embodiment)
    if spec.name == "franka_robomimic":
        return dict(FRANKA_STATE_KEYS)
    return {"robot0_state": spec.state_dim}


def write_robomimic_hdf5(
    episodes: Sequence[Episode],
    path: str | Path,
    *,
    camera_keys: Mapping[str, str] | None = None,
    state_keys: Mapping[str, int] | None = None,
    compression: str | None = None,
    filter_keys: Mapping[str, Sequence[int]] | None = None,
    env_args: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> Path:
    """Write ``episodes`` (one embodiment) as one robomimic file plus ``<file>.gwp_source.json``.

    ``camera_keys``: role -> obs key (default ``agentview_image`` / ``robot0_eye_in_hand_image``
    / ``<role>_image``); ``state_keys``: obs key -> width, in order, summing to the state dim
    (default the robosuite split for ``franka_robomimic``, else one ``robot0_state`` key);
    ``compression``: h5py filter for the datasets (``None``, ``"gzip"``, ``"lzf"``);
    ``filter_keys``: ``mask/<name>`` -> episode positions; ``env_args``: the ``data`` attribute
    (default ``{"env_name": <source>, "type": 1 (robosuite) for franka_robomimic else 2 (gym),
    "env_kwargs": {"control_freq": fps}}``). Episode ``i`` becomes ``demo_i``.
    """
    import h5py

    embodiment = common_embodiment(episodes, FORMAT)
    spec = get_embodiment(embodiment)
    state_keys = dict(state_keys) if state_keys is not None else _default_state_keys(embodiment)
    if sum(state_keys.values()) != spec.state_dim:
        raise ValueError(
            f"state_keys {state_keys} cover {sum(state_keys.values())} dims, {embodiment} has {spec.state_dim}"
        )
    roles = [r for r in spec.cameras if any(r in ep.cameras for ep in episodes)]
    keys = {r: (camera_keys or {}).get(r) or DEFAULT_CAMERA_KEYS.get(r, f"{r}_image") for r in roles}
    fps_all = sorted({float(ep.fps) for ep in episodes})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        data = f.create_group(DATA_GROUP)
        data.attrs["total"] = int(sum(ep.length for ep in episodes))
        env_kwargs = {"control_freq": fps_all[0]} if len(fps_all) == 1 else {}
        default_env = {
            "env_name": source or episodes[0].source,
            "type": 1 if embodiment == "franka_robomimic" else 2,
            "env_kwargs": env_kwargs,
        }
        data.attrs["env_args"] = json.dumps(dict(env_args) if env_args is not None else default_env)
        for i, ep in enumerate(episodes):
            g = data.create_group(f"{DEMO_PREFIX}{i}")
            g.attrs["num_samples"] = ep.length
            g.attrs[INSTRUCTION_ATTR] = ep.instruction
            g.attrs[FPS_ATTR] = float(ep.fps)
            g.create_dataset("actions", data=ep.action.astype(np.float32), compression=compression)
            rewards = np.zeros(ep.length, np.float32)
            dones = np.zeros(ep.length, np.int64)
            dones[-1] = 1
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            obs = g.create_group("obs")
            col = 0
            for key, width in state_keys.items():  # state [T, Ds] split into the obs keys, in order
                obs.create_dataset(
                    key, data=ep.state[:, col : col + width].astype(np.float32), compression=compression
                )
                col += width
            for role, key in keys.items():
                if role not in ep.cameras:
                    raise ValueError(
                        f"episode {ep.episode_id} has no {role!r} camera; every demo needs {list(keys)}"
                    )
                frames_THWC = episode_frames(ep, role)
                obs.create_dataset(
                    key, data=frames_THWC, chunks=(1, *frames_THWC.shape[1:]), compression=compression
                )
        if filter_keys:
            mask = f.create_group(MASK_GROUP)
            for name, positions in filter_keys.items():
                demos = [f"{DEMO_PREFIX}{int(p)}".encode() for p in positions]
                mask.create_dataset(name, data=np.array(demos, dtype="S"))
    tmp.replace(path)
    SourceMapping(
        embodiment=embodiment,
        cameras={key: role for role, key in keys.items()},
        state_key=",".join(state_keys),
        action_key="actions",
        source=source or path.stem,
    ).validate().write(path)
    return path
