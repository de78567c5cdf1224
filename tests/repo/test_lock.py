"""requirements.lock against pyproject.toml and the venv (scripts/check_lock.py), offline.

The repository's own lock must cover pyproject.toml and match the running venv; broken copies
of it (in tmp_path) and a synthetic installed closure must each fail with the package named.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"

_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
sys.modules["check_lock"] = check_lock  # dataclasses look their module up by name
_spec.loader.exec_module(check_lock)


def _edit(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, f"{old!r} not in {src}"
    dst.write_text(text.replace(old, new, 1))
    return dst


def _run(capsys, *argv) -> tuple[int, str]:
    rc = check_lock.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_repo_lock_covers_pyproject_and_venv(capsys):
    rc, err = _run(capsys, "--lock", LOCK, "--pyproject", PYPROJECT)
    assert rc == 0, err
    pins = check_lock.read_lock(LOCK)
    # the installer and the build backend are locked too, not only the project's packages
    assert {"pip", "setuptools", "torch", "ray", "pytest"} <= pins.keys()
    header = LOCK.read_text().split("\n\n")[0]
    assert "Python 3.11" in header or "CPython 3.11" in header
    assert "x86_64" in header and "make lock" in header


def test_dependency_dropped_from_lock_fails(tmp_path, capsys):
    pin = next(line for line in LOCK.read_text().splitlines() if line.startswith("einops=="))
    bad = _edit(LOCK, tmp_path / "requirements.lock", pin + "\n", "")
    rc, err = _run(capsys, "--lock", bad, "--pyproject", PYPROJECT, "--no-installed")
    assert rc == 1
    assert f"{bad}: einops>=0.8 (pyproject.toml) is not pinned" in err


def test_dependency_added_to_pyproject_but_not_locked_fails(tmp_path, capsys):
    # a made-up name: a real package (tomlkit was) ends up in the lock once something depends on it
    added = "gwp-unlocked-example>=0.1"
    bad = _edit(PYPROJECT, tmp_path / "pyproject.toml", '"pytest>=8",', f'"pytest>=8", "{added}",')
    rc, err = _run(capsys, "--lock", LOCK, "--pyproject", bad, "--no-installed")
    assert rc == 1
    assert f"{added} (pyproject.toml) is not pinned" in err
    assert err.count("check_lock:") == 1  # nothing else is wrong


def test_pin_outside_the_specifier_fails(tmp_path, capsys):
    pin = next(line for line in LOCK.read_text().splitlines() if line.startswith("numpy=="))
    bad = _edit(LOCK, tmp_path / "requirements.lock", pin, "numpy==1.20.0")
    rc, err = _run(capsys, "--lock", bad, "--pyproject", PYPROJECT, "--no-installed")
    assert rc == 1
    assert "numpy==1.20.0 does not satisfy numpy>=1.26" in err


@pytest.mark.parametrize(
    ("line", "problem"),
    [("numpy>=1.26", "not a 'name==version' pin"), ("numpy==2.4.6", "numpy is pinned twice")],
)
def test_malformed_lock_exits_2_naming_file_and_line(tmp_path, capsys, line, problem):
    bad = tmp_path / "requirements.lock"
    bad.write_text(f"# header\nnumpy==2.4.6\n    # via torch\n{line}\n")
    rc, err = _run(capsys, "--lock", bad, "--pyproject", PYPROJECT, "--no-installed")
    assert rc == 2
    assert err.startswith(f"check_lock: {bad}:4: {problem}")
    assert err.count("\n") == 1


def test_missing_lock_exits_2(tmp_path, capsys):
    rc, err = _run(capsys, "--lock", tmp_path / "nope.lock", "--pyproject", PYPROJECT)
    assert rc == 2
    assert err.startswith(f"check_lock: {tmp_path / 'nope.lock'}: cannot read the lock")


def test_installed_closure_walks_extras_and_catches_drift(tmp_path):
    """A synthetic venv: app[x] needs b, c (extra x) and not d (extra y); c needs e."""
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\n'
        '[project]\nname = "p"\ndependencies = ["app[x]>=1"]\n'
        "[project.optional-dependencies]\nsim = []\ndev = []\n"
    )
    installed = {
        "app": check_lock.Installed("1.0", ("b>=1", "c; extra == 'x'", "d; extra == 'y'")),
        "b": check_lock.Installed("2.1", ()),
        "c": check_lock.Installed("1.0", ("E>=1",)),
        "e": check_lock.Installed("3.0", ()),
        "pip": check_lock.Installed("25.0", ()),
    }
    lock = tmp_path / "requirements.lock"
    lock.write_text("app==1.0\nb==2.0\nc==1.0\npip==26.3\nsetuptools==84.2.1\n")
    runtime, build = check_lock.project_requirements(pyproject)
    assert [str(r) for r in build] == ["setuptools>=68"]
    pins = check_lock.read_lock(lock)
    assert check_lock.check_pins(runtime + build, pins, lock) == []
    problems = check_lock.check_installed(runtime, pins, lock, installed.get)
    assert sorted(problems) == sorted(
        [
            f"b 2.1 is installed, {lock} pins 2.0; {check_lock.REINSTALL}",
            f"{lock}: e (needed by c) is installed but not pinned; run `make lock`",
            f"pip 25.0 is installed, {lock} pins 26.3; {check_lock.REINSTALL}",
        ]
    )
    # the same closure, locked right, passes; d (extra y) was never required
    lock.write_text("app==1.0\nb==2.1\nc==1.0\ne==3.0\npip==25.0\n")
    assert check_lock.check_installed(runtime, check_lock.read_lock(lock), lock, installed.get) == []
    del installed["c"]
    assert check_lock.check_installed(runtime, check_lock.read_lock(lock), lock, installed.get) == [
        f"c (needed by app) is not installed; {check_lock.REINSTALL}"
    ]
