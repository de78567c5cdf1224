"""Window an episode into training samples (1:N).

A window starting at step t holds (p = chunk, Δ = frame_stride, K = num_future)::

    observation frame   t
    future frames       t + kΔ, k = 1..K
    action chunk        a[t : t+p]          [p, Da]  raw (normalised later)
    state               s[t]                [Ds]     raw

Window starts are ``0, stride, 2·stride, … < T`` (the *candidates*). A window needs
``span = max(p, KΔ + 1)`` steps. With ``tail="drop"`` a candidate with ``t + span > T`` is
not made: it is *dropped* and becomes a window-level rejection (stage ``window``, reason
``past_end``), so that ``candidates == made + dropped`` and the manifest's window
accounting balances. With ``tail="pad"`` every candidate is made: actions past the end
repeat the last action (``valid_steps`` says how many are real) and frames past the end
repeat the last frame (``frame_indices`` keep their nominal values t + kΔ, so they still
increase; ``camera_indices`` are the clamped ones actually decoded). An episode that yields
no window at all also gets an episode-level rejection (``too_short_for_window``).

A window of action-free video (:mod:`schemas.episode`) has an action chunk ``[p, 0]`` and no
state (``[0]``): it becomes an action-free sample (all-False masks), whatever state the
episode carried, since the statistics that would normalise that state exclude such rows.

Every window has a deterministic ``sample_id`` = uuid5(episode id, t, geometry). A
:class:`Window` carries its episode's frame references; in its Arrow row, inline and
encoded references are cut down to the 1+K frames it uses, so rows stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curation.config import WindowConfig
from schemas import Episode, FrameRef, Rejection, sample_id_for, window_geometry
from schemas.episode import FRAME_REF_TYPE
from schemas.sample import QUALITY_KEYS

QUALITY_COLUMN = "quality"  # episode-row column written by the filter stage, copied to windows


def geometry_of(cfg: WindowConfig) -> str:
    return window_geometry(cfg.chunk, cfg.frame_stride, cfg.num_future)


@dataclass(frozen=True)
class WindowPlan:
    made: tuple[int, ...]  # start steps of the windows that are made
    dropped: tuple[int, ...]  # candidate starts that need steps past the end

    @property
    def candidates(self) -> int:
        return len(self.made) + len(self.dropped)


def plan_windows(length: int, cfg: WindowConfig) -> WindowPlan:
    """Which candidate starts of a ``length``-step episode become windows."""
    starts = range(0, max(length, 0), cfg.stride)
    if cfg.tail == "pad":
        return WindowPlan(tuple(starts), ())
    last = length - cfg.span  # the last start whose window fits
    return WindowPlan(tuple(t for t in starts if t <= last), tuple(t for t in starts if t > last))


@dataclass(frozen=True, eq=False)
class Window:
    sample_id: str
    episode_id: str
    source: str
    source_path: str
    embodiment: str
    instruction: str
    fps: float  # the episode's control rate
    geometry: str
    start_frame: int
    frame_indices: tuple[int, ...]  # nominal t, t+Δ, …, t+KΔ (episode steps)
    camera_indices: tuple[int, ...]  # indices into each camera ref that are decoded
    action: np.ndarray  # [p, Da] float32, raw
    state: np.ndarray  # [Ds] float32, raw state at t
    valid_steps: int  # real (non-padded) steps of the chunk
    cameras: dict[str, FrameRef] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def frames_fps(self) -> float:
        """Rate of the 1+K frames of this window (they are Δ steps apart)."""
        step = self.frame_indices[1] - self.frame_indices[0] if len(self.frame_indices) > 1 else 1
        return self.fps / step

    def to_row(self) -> dict[str, Any]:
        idx = list(self.camera_indices)
        # Cut inline/encoded refs down to the frames used; only when every ref can be cut,
        # because all refs share ``camera_indices`` (a mix keeps full refs: correct, larger).
        compact = bool(self.cameras) and all(
            ref.kind in ("inline", "encoded") for ref in self.cameras.values()
        )
        cams = []
        for role, ref in self.cameras.items():
            if compact and ref.kind == "inline" and ref.array is not None:
                ref = FrameRef(
                    kind="inline", path=ref.path, fps=ref.fps, array=np.ascontiguousarray(ref.array[idx])
                )
            elif compact and ref.kind == "encoded":
                ref = FrameRef(
                    kind="encoded",
                    path=ref.path,
                    fps=ref.fps,
                    encoded=tuple(ref.encoded[i] for i in idx),
                    channel_order=ref.channel_order,
                    pixel_range=ref.pixel_range,
                )
            cams.append({"role": role, **ref.to_row()})
        return {
            "sample_id": self.sample_id,
            "episode_id": self.episode_id,
            "source": self.source,
            "source_path": self.source_path,
            "embodiment": self.embodiment,
            "instruction": self.instruction,
            "fps": float(self.fps),
            "geometry": self.geometry,
            "start_frame": int(self.start_frame),
            "frame_indices": list(self.frame_indices),
            "camera_indices": list(range(len(idx))) if compact else idx,
            "action": self.action.tolist(),
            "state": self.state.tolist(),
            "valid_steps": int(self.valid_steps),
            "cameras": cams,
            "quality": {k: (float(self.quality[k]) if k in self.quality else None) for k in QUALITY_KEYS},
        }

    @staticmethod
    def arrow_schema() -> pa.Schema:
        """Explicit Arrow schema of :meth:`to_row` (rows also infer to it without one)."""
        return pa.schema(
            [
                ("sample_id", pa.string()),
                ("episode_id", pa.string()),
                ("source", pa.string()),
                ("source_path", pa.string()),
                ("embodiment", pa.string()),
                ("instruction", pa.string()),
                ("fps", pa.float64()),
                ("geometry", pa.string()),
                ("start_frame", pa.int64()),
                ("frame_indices", pa.list_(pa.int64())),
                ("camera_indices", pa.list_(pa.int64())),
                ("action", pa.list_(pa.list_(pa.float32()))),
                ("state", pa.list_(pa.float32())),
                ("valid_steps", pa.int64()),
                ("cameras", pa.list_(pa.struct([("role", pa.string()), *FRAME_REF_TYPE]))),
                ("quality", pa.struct([(k, pa.float64()) for k in QUALITY_KEYS])),
            ]
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Window:
        cams = row["cameras"]
        if isinstance(cams, dict):
            cams = cams.items()
        cams = [(c["role"], c) if isinstance(c, dict) else c for c in cams]
        state = np.asarray(row["state"], dtype=np.float32).reshape(-1)
        action = np.asarray(row["action"], dtype=np.float32)
        quality = row.get("quality") or {}
        return cls(
            sample_id=row["sample_id"],
            episode_id=row["episode_id"],
            source=row["source"],
            source_path=row.get("source_path") or "",
            embodiment=row["embodiment"],
            instruction=row["instruction"],
            fps=float(row["fps"]),
            geometry=row["geometry"],
            start_frame=int(row["start_frame"]),
            frame_indices=tuple(int(i) for i in row["frame_indices"]),
            camera_indices=tuple(int(i) for i in row["camera_indices"]),
            action=action.reshape(action.shape[0], -1) if action.ndim != 2 else action,
            state=state,
            valid_steps=int(row["valid_steps"]),
            cameras={k: FrameRef.from_row(v) for k, v in cams},
            quality={k: float(v) for k, v in quality.items() if v is not None},
        )


@dataclass(frozen=True)
class WindowResult:
    windows: list[Window]
    dropped: tuple[int, ...]  # candidate starts not made (tail="drop")
    rejections: list[Rejection]  # one per dropped start, plus one for the episode if no window was made

    @property
    def candidates(self) -> int:
        return len(self.windows) + len(self.dropped)


def _make_window(ep: Episode, t: int, cfg: WindowConfig, geometry: str, quality: dict[str, float]) -> Window:
    length = ep.length
    stop = min(t + cfg.chunk, length)
    action = ep.action[t:stop]
    valid = action.shape[0]
    if valid < cfg.chunk:  # tail="pad": hold the last action
        action = np.concatenate(
            [action, np.repeat(ep.action[length - 1 : length], cfg.chunk - valid, axis=0)]
        )
    frames = tuple(t + k * cfg.frame_stride for k in range(cfg.num_future + 1))
    return Window(
        sample_id=sample_id_for(ep.episode_id, t, geometry),
        episode_id=ep.episode_id,
        source=ep.source,
        source_path=ep.source_path,
        embodiment=ep.embodiment,
        instruction=ep.instruction,
        fps=float(ep.fps),
        geometry=geometry,
        start_frame=t,
        frame_indices=frames,
        camera_indices=tuple(min(i, length - 1) for i in frames),
        action=np.ascontiguousarray(action, dtype=np.float32),
        state=np.ascontiguousarray(ep.state[t] if ep.has_action else ep.state[t, :0], dtype=np.float32),
        valid_steps=valid,
        cameras=dict(ep.cameras),
        quality=dict(quality),
    )


def _window_rejections(
    episode_id: str, source: str, path: str, length: int, plan: WindowPlan, cfg: WindowConfig
) -> list[Rejection]:
    geometry = geometry_of(cfg)
    path = path or source
    out = [
        Rejection(
            stage="window",
            reason="past_end",
            path=path,
            episode=episode_id,
            detail=f"window at step {t} needs {cfg.span} steps ({geometry}), episode has {length}",
            source=source,
            window=t,
        )
        for t in plan.dropped
    ]
    if not plan.made:
        out.append(
            Rejection(
                stage="window",
                reason="too_short_for_window",
                path=path,
                episode=episode_id,
                detail=f"{length} steps, a {geometry} window needs {cfg.span}",
                source=source,
            )
        )
    return out


def window_episode(
    episode: Episode, cfg: WindowConfig, quality: dict[str, float] | None = None
) -> WindowResult:
    """All windows of ``episode`` plus the ledger entries for the ones that could not be made."""
    plan = plan_windows(episode.length, cfg)
    geometry = geometry_of(cfg)
    windows = [_make_window(episode, t, cfg, geometry, quality or {}) for t in plan.made]
    rejections = _window_rejections(
        episode.episode_id, episode.source, episode.source_path, episode.length, plan, cfg
    )
    return WindowResult(windows, plan.dropped, rejections)


def windows(episode: Episode, cfg: WindowConfig) -> list[Window]:
    """The windows of ``episode`` (see :func:`window_episode` for the dropped ones)."""
    return window_episode(episode, cfg).windows


def make_window_fn(cfg: WindowConfig) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """Per-row (1:N) function for ``Dataset.flat_map``: episode row → window rows.

    The episode row's ``quality`` column (written by the filter stage), when present, is
    copied into every window. Rejections are not emitted here (one schema per dataset);
    get them from :func:`make_window_ledger_fn` on the same episode rows.
    """

    def window_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
        ep = Episode.from_row(row)
        quality = {k: v for k, v in (row.get(QUALITY_COLUMN) or {}).items() if v is not None}
        return [w.to_row() for w in window_episode(ep, cfg, quality).windows]

    return window_rows


def make_window_ledger_fn(cfg: WindowConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Per-row (1:1) accounting for windowing: counts and rejection rows of one episode.

    Needs only the episode's id, length, source and path, so it is cheap to run beside
    :func:`make_window_fn` on the same dataset.
    """

    def ledger_row(row: dict[str, Any]) -> dict[str, Any]:
        length = int(row["length"]) if "length" in row else len(row["action"])
        plan = plan_windows(length, cfg)
        rej = _window_rejections(
            row["episode_id"], row["source"], row.get("source_path") or "", length, plan, cfg
        )
        return {
            "episode_id": row["episode_id"],
            "windows_made": len(plan.made),
            "windows_dropped": len(plan.dropped),
            "rejections": [r.to_row() for r in rej],
        }

    return ledger_row
