"""``gwp publish`` — push a curated dataset or a saved model folder to the Hugging Face Hub.

    gwp publish dataset DIR --repo-id OWNER/NAME [--revision BRANCH] [--private] [--license ID]
    gwp publish model DIR --repo-id OWNER/NAME [--revision BRANCH] [--private]

``dataset`` takes a finished curation output folder (``curation/publish.py``: shards, ``meta/``, a
generated dataset card); ``model`` takes a folder written by ``HubMixin.save_pretrained``
(``pretrain/hub.py``). The token comes from ``HF_TOKEN`` (or a saved ``hf auth login``); the endpoint
from ``HF_ENDPOINT``. Uploads go in rounds of commits and skip unchanged files, so re-running after an
interruption resumes, and re-running on unchanged content makes no commit. Prints the commit to pin.
Exit status: 0 done, 1 the publish failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.usage import ArgumentParser, JobFailed, UsageError, command, existing_path
from schemas.hub.client import HubError, UploadSettings


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="gwp publish", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{dataset,model}")
    for kind, help_text in (
        ("dataset", "a curated dataset folder (data/ shards + meta/)"),
        ("model", "a model folder written by save_pretrained"),
    ):
        p = sub.add_parser(kind, help=help_text)
        p.add_argument("folder", metavar="DIR")
        p.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
        p.add_argument("--revision", default=None, help="branch to write (created from main if new)")
        p.add_argument("--private", action="store_true", help="create the repo private")
        p.add_argument("--message", default=None, help="commit message")
        p.add_argument("--files-per-commit", type=int, default=UploadSettings.files_per_commit)
        if kind == "dataset":
            p.add_argument("--license", default=None, help="license id for the dataset card, e.g. apache-2.0")
    return parser


@command("gwp publish")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.files_per_commit < 1:
        raise UsageError("--files-per-commit must be ≥ 1")
    existing_path(f"{args.kind} folder", args.folder, "folder")
    settings = UploadSettings(files_per_commit=args.files_per_commit)
    try:
        if args.kind == "dataset":
            from curation.publish import publish_dataset

            result = publish_dataset(
                args.folder,
                args.repo_id,
                revision=args.revision,
                private=args.private,
                commit_message=args.message,
                license=args.license,
                settings=settings,
            )
        else:
            from pretrain.hub import publish_model_folder

            result = publish_model_folder(
                args.folder,
                args.repo_id,
                revision=args.revision,
                private=args.private,
                commit_message=args.message or "Upload model",
                settings=settings,
            )
    except (HubError, OSError, ValueError) as err:
        raise JobFailed(f"{args.kind}: {err}") from err
    state = (
        f"{len(result.uploaded)} files in {result.new_commits} commits"
        if result.new_commits
        else "already up to date, no commit"
    )
    print(f"{result.repo_type} {result.repo_id}@{result.revision}: {state}; commit {result.commit}")
    print(result.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
