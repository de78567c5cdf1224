"""Checks requirements.lock against pyproject.toml and the installed virtualenv, offline.

usage: python scripts/check_lock.py [--lock FILE] [--pyproject FILE] [--no-installed]

Two checks, each a list of problems (empty = fine):

1. pins: every requirement of the locked install (``[project].dependencies``, the extras in
   ``EXTRAS``, and ``[build-system].requires``, which pip installs in its build env) is pinned in the lock at a version that
   satisfies its specifier. A dependency added to pyproject.toml but not locked fails here.
2. installed (run by the virtualenv's own Python): walking the dependency closure through the
   installed packages' metadata from the same requirements, every package reached is pinned
   in the lock and installed at exactly that version. A transitive dependency that the lock
   misses, or a venv that drifted from the lock, fails here; so does a pinned package outside
   the closure (pip) installed at another version.

The lock is read as pip reads a constraints file of ``name==version`` lines; annotation and
comment lines are skipped. Markers are evaluated for the running interpreter, which is the
lock's target (CPython 3.11, Linux x86_64) when run from the project's virtualenv.
Exit status: 0 when everything holds, 1 on a problem (one line each on stderr), 2 on unreadable
input (a missing or malformed file).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("sim", "dev")  # the extras the Makefile installs: pip install -e '.[sim,dev]'
# .installed is what make's venv target checks: removing it makes `make venv` reinstall
REINSTALL = f"reinstall: rm {Path(sys.prefix) / '.installed'} && make venv"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)\s*$")


class LockError(Exception):
    """An input file cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Installed:
    """What the check needs of an installed distribution."""

    version: str
    requires: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Version]:
    """Canonical name -> pinned version, for every ``name==version`` line of the lock."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise LockError(f"{path}: cannot read the lock: {e.strerror}") from e
    pins: dict[str, Version] = {}
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = PIN.match(text)
        if m is None:
            raise LockError(f"{path}:{lineno}: not a 'name==version' pin: {text!r}")
        name = canonicalize_name(m["name"])
        if name in pins:
            raise LockError(f"{path}:{lineno}: {name} is pinned twice")
        try:
            pins[name] = Version(m["version"])
        except InvalidVersion as e:
            raise LockError(f"{path}:{lineno}: invalid version {m['version']!r} for {name}") from e
    if not pins:
        raise LockError(f"{path}: no pins in the lock")
    return pins


def project_requirements(
    path: Path, extras: Iterable[str] = EXTRAS
) -> tuple[list[Requirement], list[Requirement]]:
    """(runtime, build) requirements of ``pip install -e '.[extras]'`` that apply here."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise LockError(f"{path}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise LockError(f"{path}: not valid TOML: {e}") from e
    project = data.get("project", {})
    optional = project.get("optional-dependencies", {})
    runtime = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise LockError(f"{path}: no [project.optional-dependencies] {extra!r}")
        runtime += optional[extra]
    build = data.get("build-system", {}).get("requires", [])
    return _parse(runtime, path), _parse(build, path)


def _parse(texts: Iterable[str], path: Path) -> list[Requirement]:
    reqs = []
    for text in texts:
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise LockError(f"{path}: invalid requirement {text!r}: {e}") from e
        if req.marker is None or req.marker.evaluate():
            reqs.append(req)
    return reqs


def check_pins(reqs: Iterable[Requirement], pins: dict[str, Version], lock: Path) -> list[str]:
    """Each requirement pinned in the lock at a version inside its specifier."""
    problems = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{lock}: {req} (pyproject.toml) is not pinned; run `make lock`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{lock}: {name}=={pins[name]} does not satisfy {req} (pyproject.toml)")
    return problems


def installed_distribution(name: str) -> Installed | None:
    """The installed distribution ``name`` of the running interpreter, None when absent."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Installed(dist.version, tuple(dist.requires or ()))


def check_installed(
    reqs: Iterable[Requirement],
    pins: dict[str, Version],
    lock: Path,
    lookup: Callable[[str], Installed | None] = installed_distribution,
) -> list[str]:
    """Every package of the installed dependency closure is pinned and installed at its pin."""
    problems = []
    # (name, extras) pairs still to visit; a package is revisited only for extras not yet seen
    todo = [(canonicalize_name(r.name), frozenset(r.extras), str(r)) for r in reqs]
    seen: dict[str, set[str]] = {}
    while todo:
        name, extras, via = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        first = name not in seen
        new_extras = extras - seen.get(name, set())
        seen.setdefault(name, set()).update(extras)
        dist = lookup(name)
        if dist is None:
            if first:
                problems.append(f"{name} (needed by {via}) is not installed; {REINSTALL}")
            continue
        if first:
            if name not in pins:
                problems.append(
                    f"{lock}: {name} (needed by {via}) is installed but not pinned; run `make lock`"
                )
            elif Version(dist.version) != pins[name]:
                problems.append(f"{name} {dist.version} is installed, {lock} pins {pins[name]}; {REINSTALL}")
        # the base requirements once, then each extra's own on first request
        contexts = ([""] if first else []) + sorted(new_extras)
        for text in dist.requires:
            req = Requirement(text)
            for extra in contexts:
                if req.marker is None or req.marker.evaluate({"extra": extra}):
                    todo.append((canonicalize_name(req.name), frozenset(req.extras), name))
                    break
    # pins outside the closure (pip) still must match where installed
    for name in sorted(pins.keys() - seen.keys()):
        dist = lookup(name)
        if dist is not None and Version(dist.version) != pins[name]:
            problems.append(f"{name} {dist.version} is installed, {lock} pins {pins[name]}; {REINSTALL}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check requirements.lock against pyproject.toml and the venv."
    )
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument(
        "--no-installed", action="store_true", help="check the lock against pyproject.toml only"
    )
    args = parser.parse_args(argv)
    try:
        pins = read_lock(args.lock)
        runtime, build = project_requirements(args.pyproject)
    except LockError as e:
        print(f"check_lock: {e}", file=sys.stderr)
        return 2
    problems = check_pins(runtime + build, pins, args.lock)
    if not args.no_installed:
        # the build requirements are installed in pip's isolated build env, not in the venv
        problems += check_installed(runtime, pins, args.lock)
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_lock: {args.lock.name} covers {args.pyproject.name}; {len(pins)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
