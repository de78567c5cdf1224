"""Curation throughput and peak memory against the corpus size: the Ray Data job against a plain decode + resize.

    python -m benchmarks.bench_curate [--episodes 64 256 1024] [--steps 120] [--size 64] [--rounds 3]

For each size N, one synthetic dataset (N episodes like ``tests.support.helpers.make_episodes``:
two cameras of smooth frames, LeRobot v3.0 with h264, written one episode at a time by a child
process, so neither the frames nor the generation count in the job's memory) is curated by the
real job (``curation.pipeline.run``, in-process Ray on every core, the ``default`` preset,
captions off) and, in the same run, the *ceiling*: a plain loop that loads each episode,
decodes every frame of its videos and composes/resizes the frames the job uses (those of its
windows) to the sample size, with no Ray, no filters, no encoding and no writing; in one
process (before and after the jobs: the mean is used) and split over every core. Each size
gets its own Ray instance, on which the job runs each time into a fresh folder: first with
cold workers (they import Ray Data and the curation code inside the timed region), then
``--rounds`` times with warm ones, each warm job right after an all-core ceiling run, so that
the load changes of a shared machine hit both sides of each ratio alike (the medians are
reported, and the round-by-round ratios). The data report is timed on its own: it is a
fixed cost of plotting, not throughput. Ray's own start (``ray.init``) is outside every
timing; its object store spills to the benchmark's work folder. Peak memory is the largest
sum of the proportional set sizes (PSS, from ``/proc/<pid>/smaps_rollup``: shared pages split
between the processes that map them) of the driver and every process under it (Ray's GCS,
raylet and workers), sampled every second; the driver's own PSS at that moment and the RSS
sum, which counts Ray's shared object store once per process, are printed beside it. Prints
a Markdown table per size, then one row per size, with the peak's growth from the smallest.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _smaps_rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process, from ``/proc/<pid>/smaps_rollup``."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def _memory_of_job(pid: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, the driver's PSS) over the driver and every process under it:
    the in-process Ray's GCS and raylet are its children, the workers the raylet's. Only this
    tree, so that another Ray on a shared machine is not counted. RSS counts a shared page
    (Ray's object store in /dev/shm, shared libraries) once per process that maps it; PSS
    splits it between them, so the PSS sum is the job's real footprint."""
    rss = pss = driver = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for proc in procs:
        try:
            r, p = _smaps_rollup(proc.pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone between the listing and the read
        rss, pss = rss + r, pss + p
        driver = p if proc.pid == pid else driver
    return rss, pss, driver


class PeakMemory:
    def __init__(self) -> None:
        self.peak = 0  # of the PSS sum
        self.peak_rss = 0
        self.driver = 0  # the driver's PSS when the sum peaked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            rss, pss, driver = _memory_of_job(os.getpid())
            if pss > self.peak:
                self.peak, self.driver = pss, driver
            self.peak_rss = max(self.peak_rss, rss)
            time.sleep(1.0)  # reading every smaps costs CPU: sample sparsely

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _plain_loop(refs, cfg) -> int:
    """Load each episode, decode every frame of its cameras (a video decodes front to back),
    compose/resize the frames the job's windows use; returns how many were composed."""
    from curation.frames import decode_frames
    from curation.ingest import load
    from curation.stages.windowing import window_episode
    from schemas.compose import compose_views

    vc, composed = cfg.video, 0
    for ref in refs:
        ep = load(ref)
        used = sorted({i for w in window_episode(ep, cfg.windows, {}).windows for i in w.camera_indices})
        views = {role: decode_frames(cam)[used] for role, cam in ep.cameras.items()}
        composed += compose_views(views, vc.width, vc.height, vc.fit).shape[0]
    return composed


def _refs(src: Path):
    from curation.ingest import SourceSpec, discover

    return discover(SourceSpec(str(src)))[0]


def _ceiling_pass(src: str, cfg, results) -> None:
    refs = _refs(Path(src))
    start = time.perf_counter()
    composed = _plain_loop(refs, cfg)
    results.put((time.perf_counter() - start, composed))


def ceiling_pass(src: Path, cfg) -> tuple[float, int]:
    """Seconds and composed frames of the plain loop in one process (no Ray; listed first),
    a child process: what its decoding leaves in the heap must not count as the job's driver's
    (it grew with the corpus)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_ceiling_pass, args=(str(src), cfg, results))
    child.start()
    seconds, composed = results.get()
    child.join()
    return seconds, composed


def _ceiling_worker(src: str, cfg, first: int, stop: int, ready, go, results) -> None:
    refs = _refs(Path(src))[first:stop]  # imports and listing before the clock
    ready.wait()
    go.wait()
    start = time.perf_counter()
    _plain_loop(refs, cfg)
    results.put(time.perf_counter() - start)


def ceiling_parallel(src: Path, cfg, episodes: int, procs: int) -> float:
    """Seconds of the same plain loop split over ``procs`` processes (consecutive runs of
    episodes, as the job's parts), started together once every process has imported and
    listed its episodes: the ceiling on every core."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Barrier(procs + 1), ctx.Barrier(procs + 1), ctx.Queue()
    per = -(-episodes // procs)
    workers = [
        ctx.Process(target=_ceiling_worker, args=(str(src), cfg, i * per, (i + 1) * per, ready, go, results))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    ready.wait()
    go.wait()
    seconds = max(results.get() for _ in workers)
    for w in workers:
        w.join()
    return seconds


def _write_source(out: str, episodes: int, steps: int, size: int) -> None:
    from curation.formats.lerobot_v3 import write_lerobot_v3
    from tests.support.helpers import iter_episodes

    write_lerobot_v3(iter_episodes([steps] * episodes, size=size), Path(out), codec="h264")


def make_source(out: Path, episodes: int, steps: int, size: int) -> Path:
    """The synthetic LeRobot v3.0 source, written by a child process: its frames (6 GiB at
    512 episodes) must not stay in this process, whose memory counts as the job's driver's
    (freed, they stayed in its heap: the peak PSS grew with the corpus by their size)."""
    import multiprocessing as mp

    child = mp.get_context("spawn").Process(target=_write_source, args=(str(out), episodes, steps, size))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"writing the synthetic source {out} failed (exit code {child.exitcode})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, nargs="+", default=[64, 256, 1024], help="corpus sizes")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument(
        "--size", type=int, default=64, help="camera frame side (the job composes to its own size)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="warm jobs, each run right after an all-core ceiling"
    )
    p.add_argument("--episodes-per-task", type=int, default=None, help="RunConfig.episodes_per_task")
    p.add_argument("--keep", action="store_true", help="keep the work folder (source, outputs) in /tmp")
    args = p.parse_args(argv)
    if min(args.episodes) < 1 or args.rounds < 1:
        p.error("--episodes and --rounds must be at least 1")
    rows = []
    for n in args.episodes:
        work = Path(tempfile.mkdtemp(prefix="gwp-bench-curate-"))
        try:
            rows.append(_bench(args, n, work))
        finally:  # the source and the job outputs: 1 GB at 192 episodes, 3 GB at 512
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"kept {work}")
    first = rows[0]
    print(f"\n## by corpus size ({args.steps} steps × 2 cameras at {args.size}², {platform.node()}, "
          f"{os.cpu_count()} cores)\n")  # fmt: skip
    print("| episodes | samples | all-core ceiling | job cold | job warm | cold ÷ all-core | warm ÷ all-core "
          "(median of pairs) | peak PSS cold | peak PSS warm | driver PSS at the peak | peak ÷ first size's |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = max(r["cold_pss"], r["warm_pss"])
        print(f"| {r['episodes']} | {r['samples']} | {r['parallel_s']:.2f} s | {r['cold_s']:.2f} s | "
              f"{r['warm_s']:.2f} s | {r['cold_ratio']:.2f} | {r['warm_ratio']:.2f} | "
              f"{r['cold_pss'] / 2**30:.2f} GiB | {r['warm_pss'] / 2**30:.2f} GiB | "
              f"{r['driver_pss'] / 2**30:.2f} GiB | "
              f"{peak / max(first['cold_pss'], first['warm_pss']):.2f} |")  # fmt: skip
    return 0


def _bench(args: argparse.Namespace, episodes: int, work: Path) -> dict:
    import ray

    from curation.config import get_preset
    from curation.ingest import SourceSpec
    from curation.pipeline import CurateJob, RunConfig, run
    from curation.report import write_report

    src = make_source(work / "src", episodes, args.steps, args.size)
    cfg = get_preset("default")
    run_kw = {} if args.episodes_per_task is None else {"episodes_per_task": args.episodes_per_task}

    def curate(name: str) -> tuple[float, tuple[int, int, int], int]:
        job = CurateJob(
            sources=(SourceSpec(str(src)),),
            out=str(work / f"out-{name}"),
            curation=cfg,
            caption=None,
            run=RunConfig(progress=False, report=False, **run_kw),
        )
        with PeakMemory() as mem:
            start = time.perf_counter()
            manifest = run(job)
            seconds = time.perf_counter() - start
        return seconds, (mem.peak, mem.peak_rss, mem.driver), manifest.counts["samples"]

    cores = os.cpu_count() or 1
    ceiling_before, frames = ceiling_pass(src, cfg)
    parallel = [ceiling_parallel(src, cfg, episodes, cores)]
    # spilling to a local folder of the benchmark's, so that the object store spills, not grows
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        object_spilling_directory=str(work / "spill"),
    )
    cold = curate("cold")  # the first job on a fresh Ray: its workers start cold
    # then, so that load changes on a shared machine hit both sides of each ratio alike,
    # rounds of (all-core ceiling, warm job) back to back
    warm = []
    for r in range(args.rounds):
        if r:
            parallel.append(ceiling_parallel(src, cfg, episodes, cores))
        warm.append(curate(f"warm{r}"))
    start = time.perf_counter()
    write_report(work / "out-cold")
    report_s = time.perf_counter() - start
    ray.shutdown()
    ceiling_after, _ = ceiling_pass(src, cfg)
    ceiling_s = (ceiling_before + ceiling_after) / 2
    samples = cold[2]
    assert all(w[2] == samples for w in warm), (cold, warm)
    parallel_s = statistics.median(parallel)
    # round 0's ceiling ran before the cold job; each later one right before its warm job
    pair_ratios = [c / w[0] for c, w in zip(parallel, warm, strict=True)]
    warm_s = statistics.median([w[0] for w in warm])
    warm_peak = max(w[1] for w in warm)
    w = cfg.windows
    print(f"\n{episodes} episodes × {args.steps} steps × 2 cameras at {args.size}², {samples} samples "
          f"(p={w.chunk}, Δ={w.frame_stride}, K={w.num_future}, stride {w.stride}), {platform.node()} "
          f"{cores} cores, load {os.getloadavg()[0]:.1f} (1-min average at the end)\n")  # fmt: skip
    print(
        "| path | seconds | samples/s | composed frames/s | peak memory, PSS (RSS) | ÷ 1-process ceiling | ÷ all-core ceiling |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| plain decode + resize, 1 process (mean of {ceiling_before:.2f} s before and {ceiling_after:.2f} s "
          f"after) | {ceiling_s:.2f} | {samples / ceiling_s:.1f} | {frames / ceiling_s:.0f} | – | 1 | "
          f"{parallel_s / ceiling_s:.2f} |")  # fmt: skip
    print(f"| plain decode + resize, {cores} processes (median of {', '.join(f'{c:.2f}' for c in parallel)} s) | "
          f"{parallel_s:.2f} | {samples / parallel_s:.1f} | {frames / parallel_s:.0f} | – | "
          f"{ceiling_s / parallel_s:.2f} | 1 |")  # fmt: skip
    for name, (job_s, peak, _) in (
        ("cold Ray workers", cold),
        (f"warm Ray workers, median of {len(warm)} jobs", (warm_s, warm_peak, samples)),
    ):
        print(f"| curation job, {name} (Ray Data, {cores} cores, no report) | {job_s:.2f} | "
              f"{samples / job_s:.1f} | {frames / job_s:.0f} | {peak[0] / 2**30:.2f} GiB ({peak[1] / 2**30:.2f}) | "
              f"{ceiling_s / job_s:.2f} | {parallel_s / job_s:.2f} |")  # fmt: skip
    print(f"| data report alone (matplotlib, after the job) | {report_s:.2f} | – | – | – | – | – |")
    print(f"\nwarm job ÷ the all-core ceiling run just before it, round by round: "
          f"{', '.join(f'{r:.2f}' for r in pair_ratios)} (median {statistics.median(pair_ratios):.2f}); "
          f"warm jobs {', '.join(f'{x[0]:.2f}' for x in warm)} s")  # fmt: skip
    print(f"job ÷ ceiling (1 process / all {cores} cores): {ceiling_s / cold[0]:.2f} / {parallel_s / cold[0]:.2f} cold, "
          f"{ceiling_s / warm_s:.2f} / {parallel_s / warm_s:.2f} warm (the job also filters, fingerprints, windows, "
          "encodes PNGs, computes stats, writes parts, shards and manifest; Ray's start is outside the timing)")  # fmt: skip
    return {
        "episodes": episodes,
        "samples": samples,
        "parallel_s": parallel_s,
        "cold_s": cold[0],
        "warm_s": warm_s,
        "cold_ratio": parallel_s / cold[0],
        "warm_ratio": statistics.median(pair_ratios),
        "cold_pss": cold[1][0],
        "warm_pss": warm_peak[0],
        "driver_pss": max(cold[1], warm_peak)[2],
    }


if __name__ == "__main__":
    raise SystemExit(main())
