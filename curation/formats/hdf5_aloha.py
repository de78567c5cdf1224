"""ACT / ALOHA HDF5: reader and writer.

Layout (ACT's ``record_sim_episodes.py`` / ALOHA's ``record_episodes.py``; one file per
episode, a folder of them is one source)::

    episode_N.hdf5
      attrs: sim (bool)                 [compress (bool), only in the compressed variant]
      /observations/qpos        [T, 14]  joint positions (left arm 6 + gripper, right arm 6 + gripper)
      /observations/qvel        [T, 14]
      /observations/images/<cam>         uint8 [T, H, W, 3]; cam_high, cam_low, cam_left_wrist,
                                         cam_right_wrist
      /action                   [T, 14]
      [/compress_len            [n_cams, T]]

**Compressed variant** (``attrs["compress"] = True``): each ``images/<cam>`` is uint8
``[T, padded]``, one JPEG per row, zero-padded to the longest frame; ``compress_len`` gives
the true lengths. A JPEG ends with the EOI marker ``FF D9``, so stripping the trailing zero
padding recovers each frame exactly whatever order ``compress_len``'s rows are in (ALOHA
uses its recording config's camera order, which the file does not record). These frames
become ``FrameRef(kind="encoded")`` (bytes carried in the reference, decoded lazily with
PIL). Caveat: ALOHA's recorder encodes RGB arrays with OpenCV, which takes them for BGR, so
such files decode with red and blue swapped; our writer encodes true RGB JPEGs.

How the reader maps it (:class:`~curation.formats.mapping.SourceMapping` from the config or
the folder's ``gwp_source.json``): ``cameras`` maps image names under
``/observations/images`` to roles (``{"cam_high": "high", "cam_left_wrist": "left_wrist", …}``),
``state_key`` / ``action_key`` are dataset paths (``/observations/qpos``, ``/action``).
Instruction: the root attribute ``gwp_instruction`` (ours), else ``mapping.instruction`` (ACT
tasks are one instruction per folder). fps: ``mapping.extra["fps"]``, else the root attribute
``gwp_fps`` (ours), else the embodiment's ``control_hz`` (ALOHA: 50 Hz).

Unexpected members: listing opens each file and walks the layout above (plus the groups on
the mapping's ``state_key`` / ``action_key`` paths and ALOHA's optional ``effort`` and
``base_action``); every other member — a soft or external link anywhere on it (never
followed), a group where a dataset belongs, an unknown name — becomes a ref of its own that
fails to load with ``unexpected_member`` naming it, beside the file's episode.

Files are ordered by the number in ``episode_N`` (then by name); the episode index is that
number. Errors name the file: ``bad_file``, ``missing_key``, ``length_mismatch``,
``nan_action``, ``nan_state``, ``bad_shape``, ``invalid_episode``; each file loads alone.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curation.formats.base import EpisodeRef, SourceReader
from curation.formats.episodes import common_embodiment, episode_frames, finish_episode
from curation.formats.hdf5_common import (
    attr_str,
    image_shape_ok,
    link_problem,
    open_hdf5,
    raise_if_unexpected,
    read_dataset,
    unexpected_ref,
)
from curation.formats.mapping import SourceMapping
from schemas import Episode, FrameRef, get_embodiment
from schemas.errors import LoadError

FORMAT = "hdf5_aloha"
EPISODE_FILE = "episode_{index}.hdf5"
IMAGES_GROUP = "/observations/images"
QPOS_KEY = "/observations/qpos"
QVEL_KEY = "/observations/qvel"
ACTION_KEY = "/action"
INSTRUCTION_ATTR = "gwp_instruction"
FPS_ATTR = "gwp_fps"
_SUFFIXES = (".hdf5", ".h5")
_NUM_RE = re.compile(r"(\d+)$")
# ALOHA's camera names per role; roles ALOHA lacks get "cam_<role>".
DEFAULT_CAMERA_KEYS = {
    "high": "cam_high",
    "low": "cam_low",
    "left_wrist": "cam_left_wrist",
    "right_wrist": "cam_right_wrist",
}


def _episode_files(root: Path) -> list[tuple[int, Path]]:
    """(index, file) for every HDF5 file in ``root``, by trailing number then name."""
    files = sorted(p for p in root.iterdir() if p.suffix in _SUFFIXES and p.is_file())
    numbered = [(int(m.group(1)) if (m := _NUM_RE.search(p.stem)) else None, p) for p in files]
    if all(n is not None for n, _ in numbered) and len({n for n, _ in numbered}) == len(numbered):
        return sorted(numbered, key=lambda np_: np_[0])  # type: ignore[return-value,arg-type]
    return list(enumerate(files))


def _strip_padding(row: np.ndarray) -> bytes:
    data = row.tobytes()
    return data.rstrip(b"\0")  # a JPEG's last byte is 0xD9, never padding


class AlohaReader(SourceReader):
    """Reads a folder of ACT/ALOHA ``episode_N.hdf5`` files (or one such file)."""

    format: ClassVar[str] = FORMAT

    @staticmethod
    def detect(root: Path) -> bool:
        import h5py

        root = Path(root)
        files = [p for _, p in _episode_files(root)] if root.is_dir() else [root]
        if not files or not h5py.is_hdf5(str(files[0])):
            return False
        try:
            with h5py.File(files[0], "r") as f:
                return QPOS_KEY in f and ACTION_KEY in f
        except OSError:
            return False

    def list_episodes(self) -> list[EpisodeRef]:
        if self.root.is_file():
            files = [(0, self.root)]
        elif self.root.is_dir():
            files = _episode_files(self.root)
        else:
            raise LoadError("missing_file", "source does not exist", self.root)
        if not files:
            raise LoadError("unknown_layout", f"no {'/'.join(_SUFFIXES)} files in the folder", self.root)
        refs = [
            EpisodeRef(format=FORMAT, root=str(self.root), path=str(p), index=n, source=self.source)
            for n, p in files
        ]
        first_free = max(n for n, _ in files) + 1
        for _, p in files:
            for member, problem in self._unexpected_members(p):
                refs.append(unexpected_ref(FORMAT, self.root, p, first_free, self.source, member, problem))
                first_free += 1
        return refs

    def _expected_paths(self) -> set[str]:
        paths = {IMAGES_GROUP, QPOS_KEY, QVEL_KEY, "/observations/effort", ACTION_KEY, "/compress_len"}
        paths.add("/base_action")  # mobile ALOHA's base velocity command
        for key in (self.mapping.state_key, self.mapping.action_key):
            parts = key.strip("/").split("/")
            paths.update("/" + "/".join(parts[: i + 1]) for i in range(len(parts)))
        # every ancestor of an expected path is an expected group
        paths.update("/" + "/".join(q.strip("/").split("/")[:i]) for q in list(paths) for i in range(1, 3))
        return {q for q in paths if q != "/"}

    def _unexpected_members(self, path: Path) -> list[tuple[str, str]]:
        """(member, problem) for every member of one file outside the ALOHA layout; none if it
        does not open (its episode's load reports that)."""
        import h5py

        expected = self._expected_paths()
        out: list[tuple[str, str]] = []

        def walk(group: Any) -> None:
            for name in group:
                member = f"{group.name.rstrip('/')}/{name}"
                problem = link_problem(group, name)
                obj = group.get(name) if problem is None else None
                if problem is None and group.name == IMAGES_GROUP and isinstance(obj, h5py.Dataset):
                    continue  # a camera, mapped or not
                if problem is None and member in expected:
                    if isinstance(obj, h5py.Group):
                        walk(obj)
                    continue
                if problem is None:
                    kind = "group" if isinstance(obj, h5py.Group) else "dataset"
                    problem = f"{kind} {member} is not part of the ALOHA layout"
                out.append((member, problem))

        try:
            with open_hdf5(path) as f:
                walk(f)
        except (LoadError, OSError):
            return []
        return out

    def _fps(self, f: Any) -> float:
        if "fps" in self.mapping.extra:
            return float(self.mapping.extra["fps"])
        if FPS_ATTR in f.attrs:
            return float(f.attrs[FPS_ATTR])
        return float(get_embodiment(self.mapping.embodiment).control_hz)

    def load(self, ref: EpisodeRef) -> Episode:
        import h5py

        raise_if_unexpected(ref)
        path = Path(ref.path)
        label = path.stem
        with open_hdf5(path) as f:
            state = read_dataset(f, self.mapping.state_key, path, label)
            action = read_dataset(f, self.mapping.action_key, path, label)
            fps = self._fps(f)
            compressed = bool(f.attrs.get("compress", False))
            cameras: dict[str, FrameRef] = {}
            for key, role in self.mapping.cameras.items():
                ds = f.get(f"{IMAGES_GROUP}/{key}")
                if not isinstance(ds, h5py.Dataset):
                    raise LoadError("missing_key", f"no image dataset {IMAGES_GROUP}/{key}", path, label)
                order = self.mapping.channel_order(key)
                if image_shape_ok(ds.shape):
                    cameras[role] = FrameRef(
                        kind="hdf5",
                        path=str(path),
                        key=ds.name,
                        stop=int(ds.shape[0]),
                        fps=fps,
                        channel_order=order,
                        pixel_range=self.mapping.pixel_range(key),
                    )
                elif ds.ndim == 2 and compressed:  # [T, padded] JPEG bytes
                    rows = np.asarray(ds[()], dtype=np.uint8)
                    encoded = tuple(_strip_padding(r) for r in rows)
                    cameras[role] = FrameRef(
                        kind="encoded",
                        path=str(path),
                        key=ds.name,
                        fps=fps,
                        encoded=encoded,
                        channel_order=order,
                        pixel_range=self.mapping.pixel_range(key),
                    )
                else:
                    raise LoadError(
                        "bad_shape",
                        f"{ds.name} has shape {ds.shape} ({ds.dtype}); want [T, H, W], [T, H, W, 1|3|4] "
                        "or compressed [T, N]",
                        path,
                        label,
                    )
            instruction = attr_str(f, INSTRUCTION_ATTR) or self.mapping.instruction
        rel = path.relative_to(self.root).as_posix() if self.root.is_dir() else "."  # ids carry no name
        return finish_episode(
            path=path,
            label=label,
            source=ref.source,
            episode_id=self.episode_id(ref, rel, ref.index),
            index=ref.index,
            embodiment=self.mapping.embodiment,
            instruction=instruction,
            fps=fps,
            state=state,
            action=action,
            cameras=cameras,
        )


# ---- writer ------------------------------------------------------------------------------


def _jpeg_rows(frames_THWC: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode each frame; returns (uint8 [T, padded] zero-padded bytes, lengths [T])."""
    from PIL import Image

    blobs = []
    for frame in frames_THWC:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    rows = np.zeros((len(blobs), int(lengths.max())), dtype=np.uint8)
    for i, b in enumerate(blobs):
        rows[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return rows, lengths


def write_aloha_hdf5(
    episodes: Sequence[Episode],
    root: str | Path,
    *,
    camera_keys: Mapping[str, str] | None = None,
    compress: bool = False,
    jpeg_quality: int = 95,
    sim: bool = True,
    source: str | None = None,
) -> Path:
    """Write ``episodes`` (one embodiment) as ``root/episode_<i>.hdf5`` plus ``root/gwp_source.json``.

    ``qpos`` is the episode state and ``qvel`` its finite difference times fps (0 at the first
    step). ``camera_keys``: role -> image name (default ALOHA's ``cam_high`` … names);
    ``compress=True`` writes the JPEG variant with ``compress_len``. Returns ``root``.
    """
    import h5py

    embodiment = common_embodiment(episodes, FORMAT)
    spec = get_embodiment(embodiment)
    roles = [r for r in spec.cameras if any(r in ep.cameras for ep in episodes)]
    keys = {r: (camera_keys or {}).get(r) or DEFAULT_CAMERA_KEYS.get(r, f"cam_{r}") for r in roles}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, ep in enumerate(episodes):
        path = root / EPISODE_FILE.format(index=i)
        tmp = path.with_name(path.name + ".part")
        with h5py.File(tmp, "w") as f:
            f.attrs["sim"] = bool(sim)
            f.attrs["compress"] = bool(compress)
            f.attrs[INSTRUCTION_ATTR] = ep.instruction
            f.attrs[FPS_ATTR] = float(ep.fps)
            state = ep.state.astype(np.float32)
            qvel = np.zeros_like(state)
            qvel[1:] = np.diff(state, axis=0) * np.float32(ep.fps)
            f.create_dataset(QPOS_KEY, data=state)
            f.create_dataset(QVEL_KEY, data=qvel)
            f.create_dataset(ACTION_KEY, data=ep.action.astype(np.float32))
            images = f.create_group(IMAGES_GROUP)
            lengths = []
            for role, key in keys.items():
                if role not in ep.cameras:
                    raise ValueError(
                        f"episode {ep.episode_id} has no {role!r} camera; every episode needs {list(keys)}"
                    )
                frames_THWC = episode_frames(ep, role)
                if compress:
                    rows, n = _jpeg_rows(frames_THWC, jpeg_quality)
                    images.create_dataset(key, data=rows, chunks=(1, rows.shape[1]))
                    lengths.append(n)
                else:
                    images.create_dataset(key, data=frames_THWC, chunks=(1, *frames_THWC.shape[1:]))
            if compress:
                f.create_dataset("compress_len", data=np.stack(lengths).astype(np.float32))
        tmp.replace(path)
    SourceMapping(
        embodiment=embodiment,
        cameras={key: role for role, key in keys.items()},
        state_key=QPOS_KEY,
        action_key=ACTION_KEY,
        source=source or root.name,
    ).validate().write(root)
    return root
