"""``gwp curate`` — the curation job: sources → normalised Parquet shards + manifest + report.

    python -m pipelines.curate --config configs/curate_demo.json
    python -m pipelines.curate --source data/metaworld --source data/robomimic.hdf5 --out runs/curated

In-process Ray by default. Submitted as a job, the same command runs on a cluster::

    ray start --head
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m pipelines.curate …

A rerun resumes: finished phases, work parts and shards are kept (see curation/pipeline.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curation.config import ConfigError
from curation.formats.conventions import known_embodiment


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gwp curate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", type=Path, help="job file (.json or .toml): sources, out, curation, caption, run"
    )
    p.add_argument("--source", action="append", default=[], help="a source folder or file (repeatable)")
    p.add_argument("--out", help="output dataset folder")
    p.add_argument(
        "--embodiment",
        help="the robot of sources without a mapping (LeRobot/RLDS conventions); a source entry's own wins",
    )
    p.add_argument("--preset", help="curation preset (default, debug, paper)")
    p.add_argument("--caption-model", help="open_clip CoCa model name, e.g. coca_ViT-B-32")
    p.add_argument("--caption-pretrained", help="open_clip tag, local checkpoint, or 'none' (random init)")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_job_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        return tomllib.loads(text)
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    from curation.pipeline import job_from_dict, run
    from curation.shards import OutputLockedError
    from schemas import SchemaVersionError

    args = build_parser().parse_args(argv)
    if args.embodiment and not known_embodiment(args.embodiment, "gwp curate"):
        return 2
    data: dict = load_job_file(args.config) if args.config else {}
    if args.source:
        data["sources"] = args.source
    if args.out:
        data["out"] = args.out
    if args.embodiment:
        data["sources"] = [
            {"embodiment": args.embodiment, **(s if isinstance(s, dict) else {"path": s})}
            for s in data.get("sources") or []
        ]
    if args.preset:
        data.setdefault("curation", {})["preset"] = args.preset
    if args.caption_model or args.caption_pretrained:
        cap = dict(data.get("caption") or {})
        if args.caption_model:
            cap["model"] = args.caption_model
        if args.caption_pretrained:
            cap["pretrained"] = None if args.caption_pretrained.lower() == "none" else args.caption_pretrained
        data["caption"] = cap
    if args.no_progress:
        data.setdefault("run", {})["progress"] = False
    try:
        job = job_from_dict(data, where=str(args.config or "command line"))
    except ConfigError as err:
        print(f"gwp curate: bad config: {err}", file=sys.stderr)
        return 2
    try:
        manifest = run(job)
    except (OutputLockedError, FileExistsError, SchemaVersionError) as err:
        # the folder is busy, or holds another dataset or one written under another schema
        print(f"gwp curate: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(manifest.counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
