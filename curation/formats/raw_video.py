"""Raw videos + a per-episode sidecar: reader and writer.

The simplest way to bring your own data: one folder, one sidecar per episode, one mp4 per
camera. Layout::

    root/
      gwp_source.json            optional SourceMapping: default embodiment, video key -> role,
                                 fallback instruction, extra.fps
      <name>.json                the episode's sidecar (JSON variant, or the CSV variant's header)
      <name>.csv                 per-step table (CSV variant)
      <name>.<key>.mp4           one video per camera, frame i = step i

**JSON sidecar** (every field but the per-step arrays is optional)::

    {
      "instruction": "open the drawer",         # else mapping.instruction, else ""
      "fps": 80.0,                              # else mapping.extra["fps"], else the embodiment's control_hz
      "embodiment": "metaworld_sawyer",         # else mapping.embodiment
      "videos": {"high": "ep0.high.mp4"},       # key -> file (relative to root); else every <name>.<key>.mp4
      "state": [[...], ...],                    # [T, Ds]
      "action": [[...], ...],                   # [T, Da]
      "timestamps": [0.0, 0.0125, ...]          # [T] seconds; else arange(T) / fps
    }

**CSV variant**: when the JSON has no ``state``/``action`` (or there is no JSON at all), the
per-step data comes from ``<name>.csv`` (or the file named by the JSON's ``"table"``): a
header row, then one row per step, columns ``timestamp, state.0 … state.{Ds-1}, action.0 …
action.{Da-1}`` in any order, plus an optional ``instruction`` column (its first non-empty
value is the instruction when the JSON gives none). ``nan``/``inf`` parse as floats and are
then rejected like any other non-finite action.

Video keys are camera roles, or source keys that ``mapping.cameras`` maps to roles. Each
camera becomes ``FrameRef(kind="video", path=<mp4>, start=0, stop=<frames in the file>)``;
its frame count (from the container header) must equal T. Step ``i``'s frame is the one
presented at ``timestamps[i] - timestamps[0]`` (the video starts with the episode; without
timestamps at ``i / fps``), checked at load against the packets' pts: ``bad_timestamps``
(timestamps that go backwards or repeat), ``frame_time_mismatch`` / ``fps_mismatch`` (a step
with no frame at its time; the latter where the sidecar's fps and the video's disagree).

Episodes are the sidecar stems (``*.json`` except ``gwp_source.json``, and ``*.csv``) in
sorted order; the index is the position in that order. Errors name the sidecar:
``bad_sidecar`` (unparsable JSON/CSV, wrong columns), ``unreadable`` (the sidecar cannot be
opened), ``unknown_embodiment``, ``missing_video`` (a listed mp4 does
not exist), ``bad_video``, ``unknown_camera``, ``length_mismatch``, ``bad_timestamps``,
``frame_time_mismatch``, ``fps_mismatch``, ``nan_action``,
``nan_state``, ``bad_shape``, ``invalid_episode``.

Without a mapping (no config entry, no ``gwp_source.json``) the reader builds one from the
first sidecar's ``embodiment``, since the sidecars describe themselves.

**Video without actions** (human or unlabelled robot video): with ``"actions": false`` in the
mapping, an episode needs no per-step table. Its sidecar JSON may give ``instruction``,
``fps``, ``embodiment``, ``videos`` and ``timestamps`` only, or it may have no sidecar at all:
then the episodes are the ``<name>.<key>.mp4`` stems (``gwp_source.json`` must then name the
embodiment). The step count is the videos' frame count (cameras that disagree:
``length_mismatch``); any state/action present is dropped. With actions expected (the
default) a sidecar without them stays an error (``bad_sidecar``), so a table that went
missing is never taken for action-free video.

The writer stores floats with Python's shortest round-trip repr, so state, action and
timestamps read back bit-exactly; frames go through the lossy codec (h264 by default).
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curation.formats.base import EpisodeRef, SourceReader
from curation.formats.episodes import episode_frames, finish_episode
from curation.formats.mapping import SIDECAR_NAME, SourceMapping
from curation.video import check_frame_times, check_timestamps, compact_times, encode_video, probe_video
from schemas import Episode, FrameRef, get_embodiment
from schemas.errors import LoadError

FORMAT = "raw_video"
EPISODE_NAME = "episode_{index:06d}"
VIDEO_FILE = "{name}.{key}.mp4"
SIDECARS = ("json", "csv")


def _sidecar_stems(root: Path) -> list[str]:
    stems = {p.stem for p in root.glob("*.json") if p.name != SIDECAR_NAME}
    stems |= {p.stem for p in root.glob("*.csv")}
    return sorted(stems)


def _video_stems(root: Path) -> list[str]:
    """Episode names of the ``<name>.<key>.mp4`` files (episodes with no sidecar)."""
    return sorted({p.name[: -len(".mp4")].rsplit(".", 1)[0] for p in root.glob("*.*.mp4")})


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:  # permission denied, a directory in its place, an I/O error
        raise LoadError("unreadable", f"cannot read: {err}", path, label) from err
    try:
        data = json.loads(raw)  # bytes: decoded as UTF-8, a bad byte is a UnicodeDecodeError
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoadError("bad_sidecar", f"cannot parse JSON: {err}", path, label) from err
    if not isinstance(data, dict):
        raise LoadError("bad_sidecar", f"expected a JSON object, got {type(data).__name__}", path, label)
    return data


def _read_csv(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(state [T, Ds], action [T, Da], timestamps [T] or None, instruction) from a step table."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise LoadError("unreadable", f"cannot read: {err}", path, label) from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise LoadError("bad_sidecar", f"cannot read CSV: {err}", path, label) from err
    if len(rows) < 2:
        raise LoadError("bad_sidecar", "CSV needs a header row and at least one step", path, label)
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if any(len(r) != len(header) for r in body):
        raise LoadError("bad_sidecar", f"every row needs {len(header)} columns", path, label)

    def columns(prefix: str) -> list[int]:
        found = {
            int(h[len(prefix) :]): i
            for i, h in enumerate(header)
            if h.startswith(prefix) and h[len(prefix) :].isdigit()
        }
        if sorted(found) != list(range(len(found))) or not found:
            raise LoadError(
                "bad_sidecar", f"need columns {prefix}0..{prefix}N-1, header is {header}", path, label
            )
        return [found[k] for k in range(len(found))]

    def floats(cols: list[int]) -> np.ndarray:
        try:
            return np.array([[float(r[c]) for c in cols] for r in body], dtype=np.float64)
        except ValueError as err:
            raise LoadError("bad_sidecar", f"non-numeric value: {err}", path, label) from err

    state, action = floats(columns("state.")), floats(columns("action."))
    timestamps = floats([header.index("timestamp")])[:, 0] if "timestamp" in header else None
    instruction = ""
    if "instruction" in header:
        col = header.index("instruction")
        instruction = next((r[col] for r in body if r[col].strip()), "")
    return state.astype(np.float32), action.astype(np.float32), timestamps, instruction


class RawVideoReader(SourceReader):
    """Reads a folder of ``<name>.json`` / ``<name>.csv`` sidecars and ``<name>.<key>.mp4`` videos."""

    format: ClassVar[str] = FORMAT

    def __init__(self, root: str | Path, mapping: SourceMapping | None = None, source: str | None = None):
        root = Path(root)
        if mapping is None and not (root / SIDECAR_NAME).exists():
            mapping = self._mapping_from_sidecars(root)
        super().__init__(root, mapping, source)

    @staticmethod
    def _mapping_from_sidecars(root: Path) -> SourceMapping | None:
        for stem in _sidecar_stems(root) if root.is_dir() else []:
            path = root / f"{stem}.json"
            if path.exists():
                embodiment = _read_json(path, stem).get("embodiment")
                if embodiment:
                    return SourceMapping(embodiment=embodiment, cameras={}, source=root.name).validate(
                        str(path)
                    )
        return None  # the base class then raises its "no mapping" error

    @staticmethod
    def detect(root: Path) -> bool:
        root = Path(root)
        if not root.is_dir():
            return False
        if (root / SIDECAR_NAME).exists() and _video_stems(root):  # videos with no sidecars
            return True
        return any(next(root.glob(f"{glob.escape(stem)}.*.mp4"), None) for stem in _sidecar_stems(root))

    def list_episodes(self) -> list[EpisodeRef]:
        if not self.root.is_dir():
            raise LoadError("missing_file", "source folder does not exist", self.root)
        stems = _sidecar_stems(self.root)
        if not self.mapping.actions:  # action-free video needs no sidecar
            stems = sorted(set(stems) | set(_video_stems(self.root)))
        if not stems:
            raise LoadError("unknown_layout", "no <name>.json or <name>.csv sidecars", self.root)
        refs = []
        for i, stem in enumerate(stems):
            sidecar = self._sidecar_of(stem)
            refs.append(
                EpisodeRef(
                    format=FORMAT,
                    root=str(self.root),
                    path=str(sidecar),
                    index=i,
                    source=self.source,
                    locator={"name": stem},
                )
            )
        return refs

    def _sidecar_of(self, name: str) -> Path:
        """The file that stands for episode ``name``: its JSON, else its CSV, else its first video."""
        for path in (self.root / f"{name}.json", self.root / f"{name}.csv"):
            if path.exists():
                return path
        videos = sorted(self.root.glob(f"{glob.escape(name)}.*.mp4"))
        return videos[0] if videos else self.root / f"{name}.json"

    def _cameras(
        self,
        meta: dict[str, Any],
        name: str,
        embodiment: str,
        fps: float,
        sidecar: Path,
        times: np.ndarray | None,
    ) -> dict[str, FrameRef]:
        spec = get_embodiment(embodiment)
        videos = meta.get("videos")
        if videos is None:  # discover <name>.<key>.mp4
            prefix = f"{name}."
            found = sorted(self.root.glob(f"{glob.escape(name)}.*.mp4"))
            videos = {p.name[len(prefix) : -len(".mp4")]: p.name for p in found}
            # A dotted key belongs to another episode named "<name>.<x>".
            videos = {k: v for k, v in videos.items() if "." not in k}
        if not isinstance(videos, dict):
            raise LoadError(
                "bad_sidecar", f"'videos' must map key -> file, got {type(videos).__name__}", sidecar, name
            )
        cameras: dict[str, FrameRef] = {}
        for key, file in videos.items():
            role = self.mapping.role_of(key) or key
            if role not in spec.cameras:
                raise LoadError(
                    "unknown_camera",
                    f"video key {key!r} is no camera role of {spec.name} {list(spec.cameras)}",
                    sidecar,
                    name,
                )
            path = self.root / str(file)
            if not path.exists():
                raise LoadError("missing_video", f"camera {role}: video {path} does not exist", sidecar, name)
            info = probe_video(path)
            ref_times: tuple[float, ...] = ()
            if times is None or len(times) == info.num_frames:  # else finish_episode names the counts
                grid = np.arange(info.num_frames) / fps if times is None else times
                ref_times = compact_times(check_frame_times(path, grid, fps, name), 0, fps)
            cameras[role] = FrameRef(
                kind="video", path=str(path), start=0, stop=info.num_frames, fps=fps, times=ref_times
            )
        return cameras

    def _fps(self, meta: dict[str, Any], control_hz: float, sidecar: Path, name: str) -> float:
        """The sidecar's fps, else the mapping's, else the embodiment's control rate."""
        try:
            return float(meta.get("fps") or self.mapping.extra.get("fps") or control_hz)
        except (TypeError, ValueError) as err:
            raise LoadError(
                "bad_sidecar", f"fps is not a number: {meta.get('fps')!r}", sidecar, name
            ) from err

    def load(self, ref: EpisodeRef) -> Episode:
        name = ref.locator["name"]
        json_path, csv_path = self.root / f"{name}.json", self.root / f"{name}.csv"
        meta = _read_json(json_path, name) if json_path.exists() else {}
        sidecar = json_path if json_path.exists() else csv_path
        embodiment = meta.get("embodiment") or self.mapping.embodiment
        try:
            spec = get_embodiment(embodiment)
        except KeyError as err:  # the same reason code as the LeRobot readers give
            raise LoadError("unknown_embodiment", err.args[0], sidecar, name) from None
        instruction = meta.get("instruction") or ""
        timestamps = meta.get("timestamps")
        if not self.mapping.actions:
            return self._load_action_free(ref, name, meta, spec.name, str(instruction))
        if "state" in meta and "action" in meta:
            try:
                state = np.asarray(meta["state"], dtype=np.float32)
                action = np.asarray(meta["action"], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise LoadError(
                    "bad_sidecar", f"state/action are not numeric tables: {err}", sidecar, name
                ) from err
        else:
            table = self.root / str(meta.get("table", csv_path.name))
            if not table.exists():
                raise LoadError(
                    "bad_sidecar",
                    f"no state/action in the JSON and no table {table.name} (for video without actions "
                    'set "actions": false in the mapping)',
                    sidecar,
                    name,
                )
            state, action, csv_timestamps, csv_instruction = _read_csv(table, name)
            timestamps = timestamps if timestamps is not None else csv_timestamps
            instruction = instruction or csv_instruction
        instruction = instruction or self.mapping.instruction
        fps = self._fps(meta, spec.control_hz, sidecar, name)
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            if timestamps.ndim != 1:
                raise LoadError(
                    "bad_sidecar", f"timestamps must be 1-D, got shape {timestamps.shape}", sidecar, name
                )
        for what, arr in (("state", state), ("action", action)):
            if arr.ndim != 2:
                raise LoadError("bad_shape", f"{what} must be [T, D], got shape {arr.shape}", sidecar, name)
        if timestamps is not None:
            check_timestamps(timestamps, sidecar, name)
        # the video starts with the episode: step i is shown at its time since the first step
        times = timestamps - timestamps[0] if timestamps is not None and timestamps.size else None
        if times is None and fps > 0:
            times = np.arange(action.shape[0], dtype=np.float64) / fps
        return finish_episode(
            path=sidecar,
            label=name,
            source=ref.source,
            episode_id=self.episode_id(ref, sidecar.name, ref.index),
            index=ref.index,
            embodiment=spec.name,
            instruction=str(instruction),
            fps=fps,
            state=state,
            action=action,
            cameras=self._cameras(meta, name, spec.name, fps, sidecar, times),
            timestamps=timestamps,
        )

    def _load_action_free(
        self, ref: EpisodeRef, name: str, meta: dict[str, Any], embodiment: str, instruction: str
    ) -> Episode:
        """An episode of video only: T from the videos' frame count, ``action``/``state`` [T, 0]."""
        sidecar = self._sidecar_of(name)
        spec = get_embodiment(embodiment)
        fps = self._fps(meta, spec.control_hz, sidecar, name)
        timestamps = meta.get("timestamps")
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            if timestamps.ndim != 1 or timestamps.size == 0:
                raise LoadError(
                    "bad_sidecar", f"timestamps must be 1-D, got shape {timestamps.shape}", sidecar, name
                )
            check_timestamps(timestamps, sidecar, name)
        times = None if timestamps is None else timestamps - timestamps[0]
        cameras = self._cameras(meta, name, spec.name, fps, sidecar, times)
        if not cameras:
            raise LoadError("missing_video", "no <name>.<camera>.mp4 video for this episode", sidecar, name)
        lengths = {f"camera {role}": c.num_frames for role, c in cameras.items()}
        if timestamps is not None:
            lengths["timestamps"] = len(timestamps)
        if len(set(lengths.values())) != 1:
            raise LoadError("length_mismatch", f"lengths differ: {lengths}", sidecar, name)
        t = next(iter(lengths.values()))
        if t == 0:
            raise LoadError("empty_episode", "episode has zero steps", sidecar, name)
        empty = np.zeros((t, 0), dtype=np.float32)
        return Episode(
            episode_id=self.episode_id(ref, sidecar.name, ref.index),
            source=ref.source,
            embodiment=spec.name,
            instruction=instruction or self.mapping.instruction,
            fps=fps,
            state=empty,
            action=empty.copy(),
            timestamps=timestamps if timestamps is not None else np.arange(t, dtype=np.float64) / fps,
            cameras=cameras,
            source_path=str(sidecar),
            source_index=ref.index,
        ).validate()


# ---- writer ------------------------------------------------------------------------------


def _write_csv(path: Path, ep: Episode) -> None:
    header = ["timestamp"]
    header += [f"state.{i}" for i in range(ep.state.shape[1])]
    header += [f"action.{i}" for i in range(ep.action.shape[1])]
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for t in range(ep.length):
            values = [float(ep.timestamps[t]), *map(float, ep.state[t]), *map(float, ep.action[t])]
            writer.writerow([repr(v) for v in values])  # shortest round-trip repr: bit-exact
    tmp.replace(path)


def write_raw_video(
    episodes: Sequence[Episode],
    root: str | Path,
    *,
    sidecar: str = "json",
    codec: str = "h264",
    crf: int | None = None,
    source: str | None = None,
) -> Path:
    """Write each episode as ``root/episode_<i>.{json|csv}`` + ``episode_<i>.<role>.mp4``; returns ``root``.

    Episodes may mix embodiments (each sidecar names its own); ``gwp_source.json`` records
    the first episode's embodiment as the default. ``sidecar="csv"`` writes the per-step
    table as CSV and a JSON header without ``state``/``action``. Action-free episodes (all of
    them or none) get sidecars without a step table and a mapping with ``"actions": false``.
    """
    if sidecar not in SIDECARS:
        raise ValueError(f"sidecar must be one of {SIDECARS}, got {sidecar!r}")
    if not episodes:
        raise ValueError(f"{FORMAT}: no episodes to write")
    action_free = not any(ep.has_action for ep in episodes)
    if not action_free and not all(ep.has_action for ep in episodes):
        raise ValueError(f"{FORMAT}: one folder holds episodes with actions or without, not both")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i, ep in enumerate(episodes):
        name = EPISODE_NAME.format(index=i)
        videos = {}
        for role in ep.cameras:
            file = VIDEO_FILE.format(name=name, key=role)
            encode_video(episode_frames(ep, role), root / file, fps=ep.fps, codec=codec, crf=crf)
            videos[role] = file
        meta: dict[str, Any] = {
            "instruction": ep.instruction,
            "fps": float(ep.fps),
            "embodiment": ep.embodiment,
            "videos": videos,
        }
        if not ep.has_action:  # video only: the mapping below says so, no per-step table
            meta["timestamps"] = ep.timestamps.astype(np.float64).tolist()
        elif sidecar == "json":
            meta["state"] = ep.state.astype(np.float32).tolist()
            meta["action"] = ep.action.astype(np.float32).tolist()
            meta["timestamps"] = ep.timestamps.astype(np.float64).tolist()
        else:
            meta["table"] = f"{name}.csv"
            _write_csv(root / f"{name}.csv", ep)
        path = root / f"{name}.json"
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(meta) + "\n")
        tmp.replace(path)
    mapping = SourceMapping(
        embodiment=episodes[0].embodiment, cameras={}, source=source or root.name, actions=not action_free
    )
    mapping.validate().write(root)
    return root
