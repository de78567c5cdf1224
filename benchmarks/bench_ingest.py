"""Ingestion throughput per source format: our readers vs a plain decode of the same files.

    python -m benchmarks.bench_ingest [--episodes 12] [--frames 100] [--size 128] [--rounds 3] [--cores 1]

One synthetic dataset (``tests.support.helpers.make_episodes``: metaworld_sawyer, cameras ``high`` +
``wrist``) is written once in all six formats. Then, per format and side by side in rounds
(a noisy shared machine slows both loops alike; the ratio is the figure that transfers):

* **reader** — ``curation.ingest.iter_episodes([source], decode=True)``: detection, listing,
  load + validation of every episode, and decoding of every camera frame to uint8 RGB. The
  per-process caches (open readers, open video cursors) are cleared before each round, so
  every round pays for opening the files as a fresh worker would.
* **plain** — the least a hand-written loader must do for the same frames, with the same
  decoder the reader picks: decord (``num_threads=1``) for h264 mp4, PyAV for AV1 mp4,
  ``h5py`` slices of the image datasets plus state/action for HDF5, PIL on the PNG bytes for
  RLDS (bytes extracted beforehand, untimed: the pure image-decode floor).

``overhead = reader time / plain time``. Frames are camera frames (steps × cameras).
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _pin(cores: int) -> str:
    if cores > 0 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:cores]
        os.sched_setaffinity(0, cpus)
        return f"{cores} core(s) {cpus}"
    return f"{os.cpu_count()} cores"


# ---- plain decoders (no toolkit code on the timed path) --------------------------------------


def _decode_mp4(path: Path) -> int:
    """Every frame of one mp4 to RGB with the decoder the reader would pick; returns frames."""
    import av

    with av.open(str(path)) as c:
        codec = c.streams.video[0].codec_context.name
    if codec in ("h264", "mpeg4", "vp9"):
        import decord

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return int(vr.get_batch(list(range(len(vr)))).asnumpy().shape[0])
    n = 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def _plain_mp4s(files: list[Path]) -> Callable[[], int]:
    return lambda: sum(_decode_mp4(f) for f in files)


def _plain_robomimic(path: Path) -> Callable[[], int]:
    import h5py
    import numpy as np

    def run() -> int:
        n = 0
        with h5py.File(path, "r") as f:
            for demo in f["data"].values():
                np.asarray(demo["actions"][()])
                for ds in demo["obs"].values():
                    arr = np.asarray(ds[()])
                    if arr.ndim == 4:
                        n += arr.shape[0]
        return n

    return run


def _plain_aloha(folder: Path) -> Callable[[], int]:
    import h5py
    import numpy as np

    def run() -> int:
        n = 0
        for path in sorted(folder.glob("*.hdf5")):
            with h5py.File(path, "r") as f:
                np.asarray(f["/action"][()])
                np.asarray(f["/observations/qpos"][()])
                for ds in f["/observations/images"].values():
                    n += np.asarray(ds[()]).shape[0]
        return n

    return run


def _plain_pngs(blobs: list[bytes]) -> Callable[[], int]:
    import numpy as np
    from PIL import Image

    def run() -> int:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                np.asarray(im.convert("RGB"))
        return len(blobs)

    return run


def _plain_for(fmt: str, path: Path) -> Callable[[], int]:
    if fmt in ("lerobot_v3", "lerobot_v2"):
        return _plain_mp4s(sorted((path / "videos").rglob("*.mp4")))
    if fmt == "raw_video":
        return _plain_mp4s(sorted(path.glob("*.mp4")))
    if fmt == "hdf5_robomimic":
        return _plain_robomimic(path)
    if fmt == "hdf5_aloha":
        return _plain_aloha(path)
    if fmt == "rlds":
        from curation.ingest import iter_episodes

        # PNG bytes pulled out once, untimed: the floor is decoding them
        blobs = [b for ep in iter_episodes([path]) for ref in ep.cameras.values() for b in ref.encoded]
        return _plain_pngs(blobs)
    raise ValueError(f"no plain decoder for {fmt}")


# ---- driver ---------------------------------------------------------------------------------


def _reader_run(path: Path) -> Callable[[], tuple[int, int]]:
    from curation import ingest, video
    from curation.formats import lerobot_reader
    from schemas import Episode

    def run() -> tuple[int, int]:
        ingest._reader.cache_clear()  # a fresh worker: reopen the source's metadata
        lerobot_reader._data_file.cache_clear()  # and re-read its data files
        video.close_cursors()  # and its open PyAV containers
        episodes = frames = 0
        for item in ingest.iter_episodes([path], decode=True):
            if not isinstance(item, Episode):
                raise RuntimeError(f"{path}: rejected {item}")
            episodes += 1
            frames += sum(int(ref.array.shape[0]) for ref in item.cameras.values())
        return episodes, frames

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--frames", type=int, default=100, help="steps per episode")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=1, help="0 = do not pin")
    p.add_argument("--formats", nargs="*", default=None)
    args = p.parse_args(argv)
    cores = _pin(args.cores)

    from curation.formats import FORMATS
    from tests.support.helpers import make_episodes, write_all_formats

    formats = args.formats or list(FORMATS)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        t0 = time.perf_counter()
        episodes = make_episodes([args.frames] * args.episodes, size=args.size)
        written = write_all_formats(episodes, Path(tmp), formats)
        del episodes
        setup_s = time.perf_counter() - t0
        readers = {fmt: _reader_run(path) for fmt, path in written.items()}
        plains = {fmt: _plain_for(fmt, path) for fmt, path in written.items()}
        times: dict[str, dict[str, list[float]]] = {f: {"reader": [], "plain": []} for f in formats}
        counts: dict[str, tuple[int, int, int]] = {}
        for _ in range(args.rounds):
            for fmt in formats:
                t = time.perf_counter()
                n_ep, n_fr = readers[fmt]()
                times[fmt]["reader"].append(time.perf_counter() - t)
                t = time.perf_counter()
                n_plain = plains[fmt]()
                times[fmt]["plain"].append(time.perf_counter() - t)
                counts[fmt] = (n_ep, n_fr, n_plain)
        sizes = {
            fmt: sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
            for fmt, path in written.items()
        }

    print(
        f"\n{args.episodes} episodes × {args.frames} steps × 2 cameras at {args.size}², "
        f"median of {args.rounds} rounds, {cores}, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()} (write all formats: {setup_s:.1f} s)\n"
    )
    print("| format | storage | MB | reader ep/s | reader frames/s | plain frames/s | overhead |")
    print("|---|---|---:|---:|---:|---:|---:|")
    storage = {
        "lerobot_v3": "AV1 mp4, packed",
        "lerobot_v2": "h264 mp4 per episode",
        "raw_video": "h264 mp4 + JSON",
        "hdf5_robomimic": "HDF5 uint8, one file",
        "hdf5_aloha": "HDF5 uint8 per episode",
        "rlds": "TFRecord, PNG per frame",
    }
    for fmt in formats:
        n_ep, n_fr, n_plain = counts[fmt]
        if n_plain != n_fr:
            raise RuntimeError(f"{fmt}: plain decode saw {n_plain} frames, reader {n_fr}")
        r = statistics.median(times[fmt]["reader"])
        q = statistics.median(times[fmt]["plain"])
        print(
            f"| {fmt} | {storage.get(fmt, '')} | {sizes[fmt] / 1e6:.1f} | {n_ep / r:.1f} | {n_fr / r:,.0f} "
            f"| {n_plain / q:,.0f} | {r / q:.2f}× |"
        )


if __name__ == "__main__":
    main()
