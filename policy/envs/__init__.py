"""Simulated evaluation and data-generation environments (Meta-World v3 on MuJoCo).

Importing this package picks the headless OpenGL backend before ``mujoco`` is imported:
``MUJOCO_GL=egl`` when unset, or ``osmesa`` when no EGL library is installed but OSMesa is.
An explicit ``MUJOCO_GL`` is kept (``glfw`` needs a display).
"""

import ctypes.util
import os
import sys

# True when mujoco was imported before a backend was chosen: offscreen rendering then fails.
MUJOCO_IMPORTED_FIRST = "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ
if "MUJOCO_GL" not in os.environ:
    _gl = (
        "osmesa" if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") else "egl"
    )
    os.environ["MUJOCO_GL"] = _gl
    os.environ.setdefault("PYOPENGL_PLATFORM", _gl)

from policy.envs.metaworld_env import (  # noqa: E402
    EMBODIMENT,
    SOURCE,
    TASK_INSTRUCTIONS,
    FastRenderer,
    MetaWorldConfig,
    MetaWorldSim,
    SimObservation,
    control_hz,
    expert_policy,
    make_env,
    rollout_expert,
)

__all__ = [
    "EMBODIMENT",
    "MUJOCO_IMPORTED_FIRST",
    "SOURCE",
    "TASK_INSTRUCTIONS",
    "FastRenderer",
    "MetaWorldConfig",
    "MetaWorldSim",
    "SimObservation",
    "control_hz",
    "expert_policy",
    "make_env",
    "rollout_expert",
]
