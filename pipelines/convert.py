"""``gwp convert`` — write the episodes of any source in another public format.

    gwp convert data/metaworld --to hdf5_robomimic --out exports/metaworld.hdf5

Used by the demo and the tests to build heterogeneous sources from the simulated episodes,
and by users to export. Rejected input episodes are reported, not written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.formats import FORMATS, writer
from curation.ingest import SourceSpec, iter_episodes
from schemas import Episode, Rejection


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwp convert", description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="source folders or files (format auto-detected)")
    p.add_argument("--to", required=True, choices=sorted(FORMATS), help="output format")
    p.add_argument("--out", required=True, type=Path, help="output folder (or .hdf5 file for robomimic)")
    return p


def convert(sources: list[str | SourceSpec], fmt: str, out: Path) -> tuple[Path, list[Rejection]]:
    """Write every loadable episode of ``sources`` as ``fmt`` at ``out``; returns (path, rejections).

    Episodes are collected first: some writers (HDF5, raw video) take a sequence, and loaded
    episodes hold frame *references*, so the list is small; frames are decoded one episode
    at a time by the writer.
    """
    episodes: list[Episode] = []
    rejected: list[Rejection] = []
    for item in iter_episodes(sources):
        (episodes if isinstance(item, Episode) else rejected).append(item)
    if not episodes:
        raise ValueError(f"nothing to convert: all {len(rejected)} input(s) were rejected")
    path = writer(fmt)(episodes, out)
    return Path(path), rejected


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path, rejected = convert(args.sources, args.to, args.out)
    except (ValueError, FileExistsError) as err:
        print(f"gwp convert: {err}", file=sys.stderr)
        return 1
    for r in rejected:
        print(f"not converted: {r.path} [{r.episode}]: {r.reason}: {r.detail}", file=sys.stderr)
    print(f"wrote {args.to} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
