"""Normalise actions and states for training, and the exact inverse (1:1).

Training representation of an action chunk ``a[t : t+p]`` observed at state ``s[t]``::

    x[i, d] = a[i, d] - s[ref(d)]     if dim d is a delta dim (spec.delta_state_index() >= 0)
    x[i, d] = a[i, d]                 if it is absolute

Every dim is then mapped affinely so that its q01 goes to −1 and its q99 to +1::

    y = (x - c) / h,   c = (q01 + q99) / 2,   h = (q99 - q01) / 2

Shared by curation (which writes normalised samples), training and the deployed policy (which
de-normalises the sampled actions), so the two directions cannot drift apart.

A dim whose quantile range is below ``NormConfig.min_range`` (a constant gripper, say) is
only centred (h = 1), so nothing is divided by ~0. Values outside [q01, q99] map outside
[−1, 1] and are *not* clipped, so :func:`denormalize_action` is the exact inverse (up to
float32 rounding): ``x = y·h + c`` and the *current* state is added back to delta dims.
Vectors are padded with zeros to ``MAX_DIM`` = 32 and returned with a validity mask.

All functions accept leading batch dims: ``action [..., T, Da]`` with ``state [..., Ds]``.
Arithmetic is float64; outputs are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.embodiment import MAX_DIM, EmbodimentSpec
from schemas.errors import ConfigError
from schemas.manifest import DimStats, EmbodimentStats


@dataclass(frozen=True)
class NormConfig:
    sketch_k: int = 1024  # KLL top-level capacity; rank error ~ 1.7/k (0.17 % at 1024)
    low_quantile: float = 0.01
    high_quantile: float = 0.99
    min_range: float = 1e-6  # q99 - q01 below this: the dim is only centred, not scaled

    def __post_init__(self) -> None:
        w = "NormConfig"
        _require(self.sketch_k >= 8, w, "sketch_k", "must be >= 8")
        _require(
            0 <= self.low_quantile < self.high_quantile <= 1, w, "low_quantile", "need 0 <= low < high <= 1"
        )
        _require(self.min_range > 0, w, "min_range", "must be positive")


def _require(ok: bool, where: str, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(where, name, problem)


_DEFAULT = NormConfig()


def _delta_index(spec: EmbodimentSpec) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(spec.delta_state_index(), dtype=np.int64)
    return np.flatnonzero(ref >= 0), ref[ref >= 0]


def _check(name: str, x: np.ndarray, dims: int, spec: EmbodimentSpec) -> None:
    if x.shape[-1] != dims:
        raise ValueError(f"{name} of {spec.name} must have {dims} dims in its last axis, got shape {x.shape}")


def to_training_action(action_TDa: np.ndarray, state_Ds: np.ndarray, spec: EmbodimentSpec) -> np.ndarray:
    """float64 ``[..., T, Da]``: delta dims become action − state[ref dim] (state at the chunk start)."""
    a = np.asarray(action_TDa, dtype=np.float64)
    s = np.asarray(state_Ds, dtype=np.float64)
    _check("action", a, spec.action_dim, spec)
    _check("state", s, spec.state_dim, spec)
    dims, refs = _delta_index(spec)
    if dims.size:
        a = a.copy()
        a[..., dims] -= s[..., None, refs]
    return a


def from_training_action(x_TDa: np.ndarray, state_Ds: np.ndarray, spec: EmbodimentSpec) -> np.ndarray:
    """Inverse of :func:`to_training_action`: the current state added back to delta dims."""
    x = np.asarray(x_TDa, dtype=np.float64)
    s = np.asarray(state_Ds, dtype=np.float64)
    dims, refs = _delta_index(spec)
    if dims.size:
        x = x.copy()
        x[..., dims] += s[..., None, refs]
    return x


def affine_of(stats: DimStats, cfg: NormConfig = _DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, half_range)`` per dim, float64; half_range is 1 where the range is degenerate."""
    lo = np.asarray(stats.q01, dtype=np.float64)
    hi = np.asarray(stats.q99, dtype=np.float64)
    half = (hi - lo) / 2
    return (lo + hi) / 2, np.where(hi - lo >= cfg.min_range, half, 1.0)


def _pad(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = y.shape[-1]
    if d > MAX_DIM:
        raise ValueError(f"{d} dims do not fit the {MAX_DIM}-dim padded layout")
    out = np.zeros((*y.shape[:-1], MAX_DIM), dtype=np.float32)
    out[..., :d] = y
    mask = np.zeros(MAX_DIM, dtype=bool)
    mask[:d] = True
    return out, mask


def _unpad(name: str, y_32: np.ndarray, dims: int, stats: DimStats, cfg: NormConfig) -> np.ndarray:
    """The first ``dims`` of normalised, padded ``[..., 32]`` values mapped back to raw units (float64)."""
    y = np.asarray(y_32, dtype=np.float64)
    if y.shape[-1] != MAX_DIM:
        raise ValueError(f"normalised {name} must have {MAX_DIM} dims, got shape {y.shape}")
    centre, half = affine_of(stats, cfg)
    return y[..., :dims] * half + centre


def _stats_dims(stats: EmbodimentStats, spec: EmbodimentSpec) -> None:
    if stats.embodiment != spec.name:
        raise ValueError(f"stats are for embodiment {stats.embodiment!r}, spec is {spec.name!r}")
    if len(stats.action.q01) != spec.action_dim or len(stats.state.q01) != spec.state_dim:
        raise ValueError(
            f"stats of {spec.name} have {len(stats.action.q01)} action / {len(stats.state.q01)} state dims, "
            f"spec has {spec.action_dim} / {spec.state_dim}"
        )


def normalize_action(
    action_TDa: np.ndarray,
    state_Ds: np.ndarray,
    spec: EmbodimentSpec,
    stats: EmbodimentStats,
    cfg: NormConfig = _DEFAULT,
) -> tuple[np.ndarray, np.ndarray]:
    """``(action [..., T, 32] float32, mask [32] bool)`` in the training representation."""
    _stats_dims(stats, spec)
    centre, half = affine_of(stats.action, cfg)
    return _pad((to_training_action(action_TDa, state_Ds, spec) - centre) / half)


def denormalize_action(
    action_T32: np.ndarray,
    state_Ds: np.ndarray,
    spec: EmbodimentSpec,
    stats: EmbodimentStats,
    cfg: NormConfig = _DEFAULT,
) -> np.ndarray:
    """Raw ``[..., T, Da]`` float32 actions from normalised, padded ones and the current state."""
    _stats_dims(stats, spec)
    x = _unpad("actions", action_T32, spec.action_dim, stats.action, cfg)
    return from_training_action(x, state_Ds, spec).astype(np.float32)


def normalize_state(
    state_Ds: np.ndarray, spec: EmbodimentSpec, stats: EmbodimentStats, cfg: NormConfig = _DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """``(state [..., 32] float32, mask [32] bool)``."""
    _stats_dims(stats, spec)
    s = np.asarray(state_Ds, dtype=np.float64)
    _check("state", s, spec.state_dim, spec)
    centre, half = affine_of(stats.state, cfg)
    return _pad((s - centre) / half)


def denormalize_state(
    state_32: np.ndarray, spec: EmbodimentSpec, stats: EmbodimentStats, cfg: NormConfig = _DEFAULT
) -> np.ndarray:
    """Raw ``[..., Ds]`` float32 state from a normalised, padded one."""
    _stats_dims(stats, spec)
    return _unpad("state", state_32, spec.state_dim, stats.state, cfg).astype(np.float32)
