"""Simulated evaluation and data-generation environments (Meta-World v3 on MuJoCo).

Importing this package picks the headless OpenGL backend before ``mujoco`` is imported:
``MUJOCO_GL=egl`` when unset, or ``osmesa`` when no EGL library is installed but OSMesa is.
An explicit ``MUJOCO_GL`` is kept (``glfw`` needs a display).

It also loads triton's LLVM before Mesa's: see :func:`load_triton_first`.
"""

import contextlib
import ctypes.util
import importlib.util
import os
import sys


def load_triton_first() -> None:
    """Import triton (when installed) before the first OpenGL context exists.

    Software OpenGL (Mesa's llvmpipe, which EGL and OSMesa use without a GPU) loads the
    system's ``libLLVM``; triton's ``libtriton.so`` carries its own LLVM. When libtriton is
    loaded second, its start-up code binds to the system LLVM's option registry and the
    process dies with SIGSEGV in ``llvm::cl::Option::addArgument`` the moment anything imports
    triton (``torch._dynamo``, DeepSpeed, diffusers all do). Loaded first, each LLVM binds to
    itself (``tests/policy/test_envs_llvm.py`` runs both orders). Cheap once torch is imported.
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    with contextlib.suppress(ImportError):  # a broken triton: nothing else can load it either
        import triton  # noqa: F401


# True when mujoco was imported before a backend was chosen: offscreen rendering then fails.
MUJOCO_IMPORTED_FIRST = "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ
if "MUJOCO_GL" not in os.environ:
    _gl = (
        "osmesa" if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") else "egl"
    )
    os.environ["MUJOCO_GL"] = _gl
    os.environ.setdefault("PYOPENGL_PLATFORM", _gl)
load_triton_first()

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
    "load_triton_first",
    "make_env",
    "rollout_expert",
]
