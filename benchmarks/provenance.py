"""What a benchmark's figures were measured on, in the words BENCHMARKS.md uses: the command as
typed, the commit (``+`` when tracked files differ from it) and the machine."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess


@functools.cache  # a benchmark calls it as it starts: its figures belong to that code, not to a later HEAD
def git_commit() -> str:
    """Short hash of HEAD, with ``+`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+" if dirty else "")


def command(module: str, argv: list[str]) -> str:
    """``python -m <module> <argv>``, quoted so that it can be pasted back into a shell."""
    return shlex.join(["python", "-m", module, *argv])


def machine() -> str:
    """Host, cores and processor, e.g. ``devvm: 2 cores (x86_64)``."""
    return f"{platform.node()}: {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
