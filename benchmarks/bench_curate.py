"""Curation throughput: samples per second of the Ray Data job against a plain decode + resize.

    python -m benchmarks.bench_curate [--episodes 16] [--steps 120] [--size 128]

One synthetic dataset (``tests.helpers.make_episodes``: two 128² cameras, smooth frames,
LeRobot v3.0 with h264) is curated by the real job (``curation.pipeline.run``, in-process Ray
on every core, the ``default`` preset, captions off) and, in the same run, the *ceiling*: a
plain loop that decodes every frame of the same videos and composes/resizes them to the
sample size, with no Ray, no windowing, no encoding and no writing. Peak memory is the
largest sum of the resident set sizes of the driver and every Ray process, sampled every
0.2 s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil


def _rss_of_job(pid: int) -> int:
    total = 0
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] == pid or "ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd:
                total += proc.info["memory_info"].rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
            continue
    return total


class PeakMemory:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_of_job(os.getpid()))
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)

    import ray

    from curation.config import get_preset
    from curation.formats.lerobot_v3 import write_lerobot_v3
    from curation.frames import decode_frames
    from curation.ingest import SourceSpec, iter_episodes
    from curation.pipeline import CurateJob, RunConfig, run
    from curation.stages.compose import compose_views
    from tests.helpers import make_episodes

    work = Path(tempfile.mkdtemp(prefix="gwp-bench-curate-"))
    episodes = make_episodes([args.steps] * args.episodes, size=args.size)
    src = write_lerobot_v3(episodes, work / "src", codec="h264")
    cfg = get_preset("default")
    vc = cfg.video

    # ceiling: decode every frame once and compose/resize it, one process, no Ray
    start = time.perf_counter()
    frames = 0
    for ep in iter_episodes([str(src)]):
        views = {role: decode_frames(ref) for role, ref in ep.cameras.items()}
        composed = compose_views(views, vc.width, vc.height, vc.fit)
        frames += composed.shape[0]
    ceiling_s = time.perf_counter() - start

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    job = CurateJob(
        sources=(SourceSpec(str(src)),),
        out=str(work / "out"),
        curation=cfg,
        caption=None,
        run=RunConfig(progress=False),
    )
    with PeakMemory() as mem:
        start = time.perf_counter()
        manifest = run(job)
        job_s = time.perf_counter() - start
    ray.shutdown()
    samples = manifest.counts["samples"]
    cores = os.cpu_count()
    print(f"\n{args.episodes} episodes × {args.steps} steps × 2 cameras at {args.size}², {samples} samples "
          f"(p={cfg.windows.chunk}, Δ={cfg.windows.frame_stride}, K={cfg.windows.num_future}, stride "
          f"{cfg.windows.stride}), {platform.node()} {cores} cores, load {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| path | seconds | samples/s | frames decoded + resized/s | peak memory |")
    print("|---|---|---|---|---|")
    print(f"| plain decode + resize (1 process, ceiling) | {ceiling_s:.1f} | {samples / ceiling_s:.1f} | "
          f"{frames / ceiling_s:.0f} | – |")  # fmt: skip
    print(f"| curation job (Ray Data, {cores} cores) | {job_s:.1f} | {samples / job_s:.1f} | "
          f"{frames / job_s:.0f} | {mem.peak / 2**30:.2f} GiB |")  # fmt: skip
    print(f"\njob ÷ ceiling: {ceiling_s / job_s:.2f} (the job also windows, encodes PNGs, computes stats, "
          "writes shards, manifest and report, and starts Ray)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
