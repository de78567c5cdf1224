"""Test-wide settings: headless rendering, quiet Ray, project-local compiled ops, no network."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Token auth on the throw-away local clusters of the tests would tie every test's Ray to the one
# ~/.ray/auth_token; a token rewritten by a concurrent run then fails every RPC (seen here).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Embodiment specs generated for unknown robots go to $XDG_CONFIG_HOME/gwp/embodiments: the tests'
# go to a folder of this run (subprocesses inherit it), never into the user's own.
_CONFIG_HOME = tempfile.mkdtemp(prefix="gwp-test-config-")
atexit.register(shutil.rmtree, _CONFIG_HOME, True)
os.environ["XDG_CONFIG_HOME"] = _CONFIG_HOME


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a shared 2-core
    machine (it slowed the debug model's steps many times over). Subprocesses set their own."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_local():
    """An in-process Ray of 2 CPUs for one test module (``address="local"``: never a cluster another
    test left running on this machine; no auth token, which an earlier ``ray.init`` may have left).
    A Ray already running in this process is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = mode
