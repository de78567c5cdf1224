"""Robot-side execution of action chunks: synchronous, naive asynchronous, real-time chunking.

Shape legend: P chunk length · Da robot action dims · s execution horizon · d inference delay.

A policy answers an observation with a chunk ``[P, Da]`` indexed from the moment the observation
was taken. Inference takes ``d`` control steps; the three modes differ in what the robot does
meanwhile and how it moves onto the new chunk. Every mode observes once every ``s`` executed
policy actions, so at each observation the active chunk's next action is its index ``s``:

* ``sync``: the robot holds still (``hold``: no motion, last gripper command) for ``d`` steps
  while the policy thinks, then runs the new chunk's actions ``[0, s)``. Time passes (the
  episode's step budget is spent) but nothing moves.
* ``naive``: the robot keeps running the old chunk ``A[s : s+d]`` during inference, then
  switches to the new chunk at its index ``d`` (``B[d : s]``): no pause, but the new chunk was
  sampled without knowing what the old one committed to, so the switch can jump.
* ``rtc`` (Black, Galliker & Levine 2025): as ``naive``, but the new chunk is sampled by the
  flow sampler guided toward the old chunk's remaining actions ``A[s:]`` (placed at the new
  chunk's positions ``[0, P − s)``) with :func:`prefix_weights`: weight 1 on the ``d`` actions
  executed during inference (frozen), an ``exp`` (or ``linear``) decay over the rest of the
  overlap, 0 after it; the guidance scale is clipped at ``max_guidance_weight`` (β).

The first chunk of an episode has no predecessor: every mode holds for ``d`` steps, then runs
``[0, s)``. The async modes need ``d <= s <= P − d`` (:meth:`ExecutionConfig.check_chunk`).

Boundary discontinuity: ``‖a_t − a_{t−1}‖`` between consecutive *policy* actions (holds are
skipped), split into switch steps (the first action taken from a new chunk) and all others
(:meth:`EpisodeExecution.discontinuity`).

Configs are frozen dataclasses in :data:`EXECUTION_PRESETS` (``sync``, ``naive``, ``rtc``),
overridden field by field like every other config of the project.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from schemas.config import check_choices
from schemas.errors import ConfigError
from schemas.registry import Registry

Mode = Literal["sync", "naive", "rtc"]
Schedule = Literal["exp", "linear", "ones"]


@dataclass(frozen=True)
class ExecutionConfig:
    mode: Mode = "sync"
    horizon: int = 8  # s: policy actions executed per chunk before the next observation
    delay: int = 0  # d: control steps one inference takes (the environment advances meanwhile)
    schedule: Schedule = "exp"  # guidance weights over the overlap after the frozen prefix (rtc)
    max_guidance_weight: float = 5.0  # β: clip on the guidance scale (rtc)

    def __post_init__(self) -> None:
        check_choices(self, "execution")
        if self.horizon < 1:
            raise ConfigError("execution", "horizon", f"must be >= 1, got {self.horizon}")
        if self.delay < 0:
            raise ConfigError("execution", "delay", f"must be >= 0, got {self.delay}")
        if not self.max_guidance_weight > 0:
            raise ConfigError(
                "execution", "max_guidance_weight", f"must be > 0, got {self.max_guidance_weight}"
            )

    def check_chunk(self, chunk: int) -> None:
        """Async modes need ``d <= s <= P − d``: the old chunk covers the whole inference, and the
        new chunk arrives before the next observation is due. Sync runs ``min(s, P)`` actions."""
        if self.mode == "sync":  # a shorter chunk runs whole, as without an execution mode
            return
        if not self.delay <= self.horizon <= chunk - self.delay:
            raise ConfigError(
                "execution",
                "horizon",
                f"{self.mode} execution needs delay <= horizon <= chunk - delay, got delay {self.delay}, "
                f"horizon {self.horizon}, chunk {chunk}",
            )


EXECUTION_PRESETS: Registry[ExecutionConfig] = Registry("execution preset")
for _mode in ("sync", "naive", "rtc"):
    EXECUTION_PRESETS.register(_mode, ExecutionConfig(mode=_mode))


def get_execution_config(name: str, **overrides: object) -> ExecutionConfig:
    return dataclasses.replace(EXECUTION_PRESETS.get(name), **overrides)


def prefix_weights(chunk: int, delay: int, horizon: int, schedule: Schedule = "exp") -> np.ndarray:
    """[P] guidance weights of real-time chunking over the new chunk's positions.

    ``i < d``: 1 (executed during inference: frozen); ``d <= i < P − s``: the overlap with the old
    chunk, ``c·(e^c − 1)/(e − 1)`` with ``c = (P − s − i)/(P − s − d + 1)`` for ``exp``, ``c``
    for ``linear``, 1 for ``ones``; ``i >= P − s``: 0 (the old chunk has nothing there).
    """
    P, d, s = chunk, delay, horizon
    if not 0 <= d <= P - s:
        raise ValueError(f"prefix_weights: need 0 <= delay <= chunk - horizon, got d={d} P={P} s={s}")
    w = np.zeros(P, dtype=np.float32)
    w[:d] = 1.0
    i = np.arange(d, P - s)
    c = (P - s - i) / (P - s - d + 1)
    if schedule == "exp":
        w[d : P - s] = c * np.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        w[d : P - s] = c
    elif schedule == "ones":
        w[d : P - s] = 1.0
    else:
        raise ValueError(f"prefix_weights: unknown schedule {schedule!r}")
    return w


@dataclass
class _Step:
    action: np.ndarray
    chunk: int  # which chunk of the episode the action came from; -1 for a hold


@dataclass
class EpisodeExecution:
    """The executor of one episode: chunk in, the actions to run until the next observation out."""

    cfg: ExecutionConfig
    hold: Callable[[np.ndarray | None], np.ndarray]  # last policy action (or None) -> a no-motion action
    prev_PDa: np.ndarray | None = None
    chunks: int = 0
    last: np.ndarray | None = None
    steps: list[_Step] = field(default_factory=list)

    def guidance(self) -> np.ndarray | None:
        """RTC's target: the old chunk's actions from index ``s`` on ``[P − s, Da]``, or None."""
        if self.cfg.mode != "rtc" or self.prev_PDa is None:
            return None
        return self.prev_PDa[self.cfg.horizon :]

    def next_actions(self, chunk_PDa: np.ndarray) -> np.ndarray:
        """``[k, Da]`` actions the environment runs until the next observation."""
        cfg, s, d = self.cfg, self.cfg.horizon, self.cfg.delay
        cfg.check_chunk(len(chunk_PDa))
        new, old = self.chunks, self.chunks - 1
        if self.prev_PDa is None or cfg.mode == "sync":
            run = [_Step(self.hold(self.last), -1) for _ in range(d)]
            run += [_Step(a, new) for a in chunk_PDa[:s]]
        else:
            run = [_Step(a, old) for a in self.prev_PDa[s : s + d]]
            run += [_Step(a, new) for a in chunk_PDa[d:s]]
        self.prev_PDa, self.chunks = chunk_PDa, self.chunks + 1
        for st in run:
            if st.chunk >= 0:
                self.last = st.action
        self.steps += run
        return np.stack([st.action for st in run]).astype(np.float32)

    def discontinuity(self, length: int) -> tuple[list[float], list[float]]:
        """``(‖Δa‖ at switch steps, ‖Δa‖ elsewhere)`` over the first ``length`` executed steps.

        A switch step is a policy action from another chunk than the policy action before it.
        """
        at_switch, elsewhere = [], []
        prev: _Step | None = None
        for st in self.steps[:length]:
            if st.chunk < 0:
                continue
            if prev is not None:
                jump = float(np.linalg.norm(st.action - prev.action))
                (at_switch if st.chunk != prev.chunk else elsewhere).append(jump)
            prev = st
        return at_switch, elsewhere
