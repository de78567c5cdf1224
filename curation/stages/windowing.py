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
:class:`Window` carries its episode's frame references; the episode pass
(:mod:`curation.episode_samples`) decodes each camera once and picks the frames at
``camera_indices``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curation.config import WindowConfig
from schemas import Episode, FrameRef, Rejection, sample_id_for, window_geometry


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

    def reject(reason: str, detail: str, window: int = -1) -> Rejection:
        return Rejection(
            stage="window",
            reason=reason,
            path=path or source,
            episode=episode_id,
            detail=detail,
            source=source,
            window=window,
        )

    out = [
        reject("past_end", f"window at step {t} needs {cfg.span} steps ({geometry}), episode has {length}", t)
        for t in plan.dropped
    ]
    if not plan.made:
        out.append(reject("too_short_for_window", f"{length} steps, a {geometry} window needs {cfg.span}"))
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
