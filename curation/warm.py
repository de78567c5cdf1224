"""Warm the job's Ray workers while the driver is busy with its own start.

A fresh worker (every job gets its own, on a cluster too) spends CPU time on its first Ray
Data task before any episode work: importing Ray Data's map operator and the per-episode
stack (curation, numpy, pyarrow, PyAV, decord, ISA-L; the figures are in BENCHMARKS.md,
"Measurements behind the code"). The driver meanwhile imports Ray Data itself and discovers the episodes, on one core, while
the workers sit idle. :func:`warm_workers`, called as soon as Ray is up, runs one import
task per CPU so that both happen at once; the phase-2 tasks then find the modules loaded
(Ray reuses a job's worker processes for its tasks of the same resource shape).

Nothing depends on it: a warm-up that fails or has not finished changes only timing, and
the real tasks import what they need themselves.
"""

from __future__ import annotations

import importlib

# what a phase-2 task imports on first use: Ray Data's task wrapper, then the episode stack
MODULES = (
    "ray.data._internal.execution.operators.map_operator",
    "curation.episode_samples",
    "curation.parts",
    "curation.stages.stats",
    "pyarrow.parquet",
    "av",
    "decord",
)


def import_modules(names: tuple[str, ...] = MODULES) -> int:
    """Import ``names`` in this process; returns how many imported (a missing one is skipped)."""
    done = 0
    for name in names:
        try:
            importlib.import_module(name)
            done += 1
        except ImportError:
            continue
    return done


def warm_workers(cpus: int, num_cpus: float = 1.0) -> list:
    """Start one import task per CPU (each holding ``num_cpus``, as the phase-2 tasks do, so
    they land on the same worker processes); returns their refs, which need not be awaited."""
    import ray

    task = ray.remote(num_cpus=num_cpus, max_retries=0)(import_modules)
    return [task.remote() for _ in range(max(1, int(cpus / num_cpus)))]
