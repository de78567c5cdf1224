"""Rendering and triton in one process: both orders exit cleanly (:func:`policy.envs.load_triton_first`).

Without a GPU, OpenGL is Mesa's llvmpipe, which loads the system libLLVM; triton brings its own.
Before the fix, rendering first and then importing ``torch._dynamo`` (which imports triton)
killed the process with SIGSEGV; at the end of the test suite it did so at exit. Each order
runs in a fresh interpreter, since the crash takes the process with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("metaworld")

ROOT = Path(__file__).resolve().parents[2]

RENDER = """
from policy.envs import MetaWorldConfig, MetaWorldSim
sim = MetaWorldSim(MetaWorldConfig(), seed=0, render=True)
obs = sim.reset(0)
assert obs.images, "no camera frame rendered"
sim.close()
"""
TRITON = "import torch._dynamo\n"


@pytest.mark.parametrize("order", ["render_then_triton", "triton_then_render"])
def test_rendering_and_triton_share_a_process(order):
    code = RENDER + TRITON if order == "render_then_triton" else TRITON + RENDER
    code += "print('ok', flush=True)\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), (
        f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    )
