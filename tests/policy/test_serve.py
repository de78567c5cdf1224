"""``gwp serve``: openpi's own client (PyPI, its own virtualenv) drives a GWP policy unchanged.

A tiny ``debug`` policy is saved in the test and served by the real command in a subprocess;
``.venvs/openpi-client`` (scripts/make_openpi_client_venv.sh, made here when missing, and by
``make test`` before pytest) runs tests/policy/openpi_client_driver.py against it. The actions
must equal ``Policy.predict_action`` on the same observation and seed; a malformed observation
gets an error on its own connection while the other client keeps being served. In-process tests
cover the package's client (no torch), the health endpoint, ``with_video``, RTC requests,
the wire format and the command's argument errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from policy.api import Policy
from policy.server import PolicyServer, policy_metadata
from policy.wire import WireError, packb, to_observation, unpackb
from schemas import get_embodiment
from tests.support.tiny_policy import tiny_policy_model

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OPENPI_CLIENT_VENV", ROOT / ".venvs" / "openpi-client"))
SPEC = get_embodiment("metaworld_sawyer")
CHUNK = 8
PORT_ANY = ("--port", "0", "--threads", "1")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    model = tiny_policy_model((SPEC,), chunk=CHUNK)
    return Path(model.save_pretrained(tmp_path_factory.mktemp("served") / "policy"))


@pytest.fixture(scope="module")
def local(policy_dir) -> Policy:
    return Policy.from_pretrained(policy_dir)


def observation(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {r: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for r in SPEC.cameras},
        "state": rng.normal(size=SPEC.state_dim).astype(np.float32),
        "instruction": "open the drawer",
    }


def openpi_venv() -> Path:
    """The robot-side venv; made on first use (a few small wheels) so a fresh clone's pytest runs it."""
    if not (VENV / ".complete").exists():
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "make_openpi_client_venv.sh"), str(VENV)],
            check=True,
            timeout=600,
            env=dict(os.environ, PYTHON=sys.executable),
        )
    return VENV / "bin" / "python"


class ServeProcess:
    """``gwp serve`` in a subprocess on a port the system picks; the port is read from its stdout."""

    def __init__(self, policy_dir: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", "--policy", str(policy_dir), *PORT_ANY],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on ws://" not in line:
            self.proc.kill()
            raise AssertionError(f"gwp serve did not start: {line!r}\n{self.proc.stderr.read()}")
        self.port = int(line.split("ws://")[1].split()[0].rsplit(":", 1)[1])

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, out


def test_openpi_client_from_pypi_drives_gwp_serve(policy_dir, local, tmp_path):
    python = openpi_venv()
    obs = observation()
    np.savez(
        tmp_path / "obs.npz",
        state=obs["state"],
        prompt=obs["instruction"],
        **{f"image_{r}": img for r, img in obs["images"].items()},
    )
    files = (str(tmp_path / "obs.npz"), str(tmp_path / "out.npz"))
    server = ServeProcess(policy_dir)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
            assert r.status == 200 and r.read() == b"OK\n"
        run = subprocess.run(
            [str(python), str(ROOT / "tests/policy/openpi_client_driver.py"), str(server.port), *files],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
    finally:
        code, out = server.stop()
    assert code == 0 and "stopped" in out  # SIGTERM: a clean shutdown

    got = np.load(tmp_path / "out.npz")
    want0 = local.predict_action(obs, seed=0)
    want1 = local.predict_action(obs, seed=1)
    assert want0.shape == (CHUNK, SPEC.action_dim)
    for key in ("flat", "nested", "second_after_error", "first_after_error", "concurrent_seed0"):
        np.testing.assert_allclose(got[key], want0, rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(got["concurrent_seed1"], want1, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want0, want1)  # the seed reached the sampler
    assert "state of 'metaworld_sawyer' must have shape [4]" in str(got["error"])
    assert json.loads(str(got["timing_keys"])) == ["infer_ms"]
    meta = json.loads(str(got["metadata"]))
    assert meta["chunk"] == CHUNK and meta["embodiments"][0]["cameras"] == list(SPEC.cameras)


# ---------------------------------------------------------------- in process: the package's client


@pytest.fixture(scope="module")
def served(local):
    """A PolicyServer on a free port in a background thread of this process."""
    server = PolicyServer(local, "127.0.0.1", 0, policy_metadata(local, "tiny"))
    ready = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(lambda _: ready.set())), daemon=True)
    thread.start()
    assert ready.wait(60)
    yield server
    server.stop()
    thread.join(60)
    assert not thread.is_alive()


def test_package_client_matches_local_policy(served, local):
    from policy.client import PolicyClient, ServerError

    obs = observation(2)
    with PolicyClient(f"127.0.0.1:{served.bound_port}") as client:
        assert client.chunk == CHUNK
        np.testing.assert_allclose(
            client.predict_action(obs, seed=3), local.predict_action(obs, seed=3), atol=1e-5
        )
        # reseed -> the next request carries the seed (how the evaluator seeds a policy)
        client.reseed(4)
        np.testing.assert_allclose(client.predict_action(obs), local.predict_action(obs, seed=4), atol=1e-5)
        out = client.infer(dict(obs, with_video=True, seed=5))
        pred = local.predict(obs, with_video=True, seed=5)
        np.testing.assert_allclose(out["actions"], pred.actions_PDa, atol=1e-5)
        assert out["frames"].dtype == np.uint8 and out["frames"].shape == pred.frames_KHW3.shape
        assert set(out["server_timing"]) >= {"infer_ms"} and out["policy_timing"]["infer_ms"] > 0
        prev = local.predict_action(obs, seed=6)[3:]
        guided = client.predict_action_guided(obs, prev, 2, seed=7)
        np.testing.assert_allclose(guided, local.predict_action_guided(obs, prev, 2, seed=7), atol=1e-5)
        np.testing.assert_allclose(guided[:2], prev[:2], atol=1e-6)  # the frozen prefix
        for bad, match in [
            ({**obs, "images": {"high": obs["images"]["high"]}}, r"missing camera\(s\) \['wrist'\]"),
            ({**obs, "speed": 2}, r"unknown request key\(s\) \['speed'\]"),
            ({**obs, "prompt": "x"}, "mixes openpi's flat keys"),
            ({**obs, "seed": "zero"}, "'seed' must be an integer"),
            ({**obs, "prev_actions": np.zeros((9, 4)), "inference_delay": 1}, "prev_actions must have shape"),
            ({**obs, "prev_actions": np.zeros((4, 4)), "with_video": True}, "cannot be combined"),
        ]:
            with pytest.raises(ServerError, match=match):
                client.infer(bad)
        assert client.predict_action(obs, seed=3).shape == (CHUNK, 4)  # the connection survived


def test_health_and_a_raw_text_frame(served):
    from websockets.sync.client import connect

    with urllib.request.urlopen(f"http://127.0.0.1:{served.bound_port}/healthz", timeout=10) as r:
        assert r.read() == b"OK\n"
    with connect(f"ws://127.0.0.1:{served.bound_port}") as ws:
        assert unpackb(ws.recv())["policy"] == "tiny"
        ws.send("not msgpack")
        assert "binary msgpack" in ws.recv()
        ws.send(b"\xc1garbage")
        assert "not msgpack+numpy" in ws.recv()


def test_client_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import policy.client, policy.wire\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_wire_format_and_observation_forms():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = unpackb(packb({"a": a, "n": np.int64(7), "s": "x"}))
    np.testing.assert_array_equal(back["a"], a)
    assert back["a"].dtype == np.float32 and back["n"] == 7 and type(back["n"]) is np.int64
    with pytest.raises(TypeError, match="object"):
        packb({"o": np.array([None, 1], dtype=object)})
    img = np.zeros((4, 4, 3), np.uint8)
    flat = {"observation/high": img, "observation/state": a[0], "prompt": "go", "embodiment": "e", "seed": 1}
    obs, opt = to_observation(flat)
    assert set(obs) == {"images", "state", "instruction", "embodiment"} and obs["instruction"] == "go"
    assert list(obs["images"]) == ["high"] and opt == {"seed": 1}
    nested, _ = to_observation({"images": {"high": img}, "state": a[0], "instruction": "go"})
    assert set(nested) == {"images", "state", "instruction"}
    for bad, match in [
        (["x"], "must be a map"),
        ({1: 2}, "must be strings"),
        ({"prompt": "x", "state": 1}, "mixes"),
    ]:
        with pytest.raises(WireError, match=match):
            to_observation(bad)


def test_cli_errors_are_one_line(tmp_path):
    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "serve", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = run("--policy", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such folder" in missing.stderr
    port = run("--policy", str(tmp_path), "--port", "70000")
    assert port.returncode == 2 and "--port must be in [0, 65535]" in port.stderr
    bad_dir = run("--policy", str(tmp_path), "--port", "0")  # exists, but holds no policy
    assert bad_dir.returncode == 1 and "cannot load policy" in bad_dir.stderr
    assert "Traceback" not in missing.stderr + port.stderr + bad_dir.stderr


def test_a_served_policy_evaluates_exactly_as_the_local_one(served, local, tmp_path, capsys):
    from pipelines.evaluate import main as evaluate_main
    from policy.client import PolicyClient
    from policy.eval_workers import EnvWorkers
    from policy.evaluate import EvalConfig, evaluate
    from policy.execution import ExecutionConfig

    task, size, steps = "drawer-open-v3", 64, 16
    url = f"ws://127.0.0.1:{served.bound_port}"
    with EnvWorkers(1, (task,), size, steps) as pool:
        for execution in (None, ExecutionConfig(mode="rtc", horizon=4, delay=2)):
            cfg = EvalConfig(
                tasks=(task,), episodes=1, image_size=size, max_steps=steps, replan_every=4, videos_per_task=0
            )
            cfg = dataclasses.replace(cfg, execution=execution)
            here = evaluate(local, cfg, workers=pool)
            with PolicyClient(url) as client:
                there = evaluate(client, cfg, workers=pool)
            np.testing.assert_allclose(
                [e.final_state for e in there.episodes], [e.final_state for e in here.episodes], atol=1e-4
            )
            assert there.policy_calls == here.policy_calls or execution is None  # batch vs one by one
            if execution is not None:
                assert there.boundary["switches"] == here.boundary["switches"] > 0

    argv = ["--server", f"served={url}", "--tasks", task, "--episodes", "1", "--image-size", str(size)]
    argv += ["--max-steps", str(steps), "--replan-every", "4", "--execution", "rtc", "--delay", "2"]
    argv += ["--videos-per-task", "0", "--no-progress", "--out", str(tmp_path / "eval")]
    assert evaluate_main(argv) == 0
    out = capsys.readouterr().out
    assert "served: rtc execution, delay 2: mean |Δa| at chunk switches" in out
    result = json.loads((tmp_path / "eval" / "served" / "results.json").read_text())
    assert result["boundary"]["switches"] > 0
    bad = [
        "--server",
        url,
        "--execution",
        "naive",
        "--delay",
        "5",
        "--replan-every",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert evaluate_main(bad) == 2
    assert "delay <= horizon <= chunk - delay" in capsys.readouterr().err
