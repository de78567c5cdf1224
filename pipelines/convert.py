"""``gwp convert`` — write the episodes of any source in another public format.

    gwp convert data/metaworld --to hdf5_robomimic --out exports/metaworld.hdf5

Used by the demo and the tests to build heterogeneous sources from the simulated episodes,
and by users to export. Rejected input episodes are reported, not written. Exit status: 0 written;
1 nothing to convert (every input rejected) or the output exists; 2 a mistake in the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.formats import FORMATS, writer
from curation.ingest import SourceSpec, iter_episodes
from pipelines.config_flags import names_flag
from pipelines.usage import ArgumentParser, JobFailed, command, existing_path
from schemas import Episode, Rejection


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp convert", description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="source folders or files (format auto-detected)")
    names_flag(p, "--to", "output format", sorted(FORMATS), required=True)
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
        reasons = ", ".join(f"{r.path}: {r.reason}" for r in rejected[:3])
        more = f" and {len(rejected) - 3} more" if len(rejected) > 3 else ""
        raise ValueError(f"nothing to convert: all {len(rejected)} input(s) were rejected ({reasons}{more})")
    path = writer(fmt)(episodes, out)
    return Path(path), rejected


@command("gwp convert")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for source in args.sources:
        existing_path("source", source)
    try:
        path, rejected = convert(args.sources, args.to, args.out)
    except (ValueError, FileExistsError) as err:
        raise JobFailed(str(err)) from err
    for r in rejected:
        print(f"not converted: {r.path} [{r.episode}]: {r.reason}: {r.detail}", file=sys.stderr)
    print(f"wrote {args.to} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
