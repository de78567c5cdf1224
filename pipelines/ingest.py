"""``gwp ingest`` — read any mix of sources into one episode stream and account for it.

    gwp ingest data/metaworld data/robomimic.hdf5 --ray --ledger runs/ledger.jsonl
    gwp ingest --scan data/ --decode          # every dataset in data/ (curation.ingest.discover_sources)
    gwp ingest data/so100 --embodiment so100  # a LeRobot dataset without gwp_source.json

Prints, per source and format, how many episodes loaded and how many were rejected (with
their reasons), and writes the rejection ledger as JSON lines. ``--ray`` runs the same
stages as a Ray Data job (in-process unless ``RAY_ADDRESS`` points at a cluster).
Exit status: 0 some episodes loaded; 1 none did (every input rejected, or nothing found); 2 a
mistake in the arguments (a source that does not exist, an unknown ``--format``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa

from curation.formats import FORMATS
from curation.ingest import (
    SourceSpec,
    discover_sources,
    item_from_row,
    items_table,
    iter_episodes,
    read_episodes,
)
from pipelines.config_flags import names_flag
from pipelines.usage import ArgumentParser, JobFailed, command, existing_path
from schemas import Episode, Rejection, get_embodiment


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp ingest", description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="source folders or files (format auto-detected)")
    names_flag(p, "--format", "source format", sorted(FORMATS), help="force one format for every source")
    p.add_argument(
        "--embodiment",
        default=None,
        help="the robot of sources without a mapping (LeRobot/RLDS conventions; default: robot_type)",
    )
    p.add_argument("--scan", action="store_true", help="each argument is a folder of sources, one per child")
    p.add_argument("--ray", action="store_true", help="run as a Ray Data job")
    p.add_argument("--decode", action="store_true", help="also decode every frame (checks the videos)")
    p.add_argument("--ledger", type=Path, default=None, help="write rejections here as JSON lines")
    return p


def _without_frames(item: Episode | Rejection) -> Episode | Rejection:
    """Only counts are needed here: drop (possibly decoded) frames as soon as an episode is read."""
    return item.with_(cameras={}) if isinstance(item, Episode) else item


def _without_frames_batch(batch: pa.Table) -> pa.Table:
    return items_table(_without_frames(item_from_row(r)) for r in batch.to_pylist())


def summarise(items: list[Episode | Rejection]) -> dict:
    episodes = [i for i in items if isinstance(i, Episode)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    return {
        "inputs": len(items),
        "episodes": len(episodes),
        "rejected": len(rejections),
        "frames": sum(e.length for e in episodes),
        "by_source": dict(Counter(e.source for e in episodes)),
        "by_embodiment": dict(Counter(e.embodiment for e in episodes)),
        "rejection_reasons": dict(Counter(r.reason for r in rejections)),
    }


@command("gwp ingest")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.embodiment:
        get_embodiment(args.embodiment)  # a misspelt robot: the registry's did-you-mean, exit 2
    for source in args.sources:
        existing_path("--scan folder" if args.scan else "source", source)
    paths = [s.path for f in args.sources for s in discover_sources(f)] if args.scan else args.sources
    if not paths:
        raise JobFailed(f"no dataset found in {', '.join(args.sources)} (--scan looks at each child)")
    specs = [SourceSpec(path=str(s), format=args.format, embodiment=args.embodiment) for s in paths]
    if args.ray:
        import ray

        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        # 1:1 in the workers: keep decoded frames out of the driver, it only counts
        ds = read_episodes(specs, decode=args.decode)
        ds = ds.map_batches(_without_frames_batch, batch_format="pyarrow", num_cpus=0.25)
        items = [item_from_row(r) for r in ds.iter_rows()]
    else:
        items = [_without_frames(i) for i in iter_episodes(specs, decode=args.decode)]
    summary = summarise(items)
    print(json.dumps(summary, indent=2))
    rejections = [i for i in items if isinstance(i, Rejection)]
    for r in rejections:
        print(f"rejected {r.path} [{r.episode}] at {r.stage}: {r.reason}: {r.detail}", file=sys.stderr)
    if args.ledger:
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        args.ledger.write_text("".join(json.dumps(r.to_row()) + "\n" for r in rejections))
    if not summary["inputs"]:
        raise JobFailed(f"no episode found in {', '.join(map(str, paths))}")
    if not summary["episodes"]:
        reasons = ", ".join(f"{k}: {n}" for k, n in Counter(r.reason for r in rejections).most_common(3))
        raise JobFailed(
            f"no episode loaded: all {summary['inputs']} input(s) rejected ({reasons}; see above)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
