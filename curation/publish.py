"""Publish a curated dataset folder to a Hugging Face Hub dataset repo (ARCHITECTURE.md, "The Hub").

What goes up (the folder layout is ``curation/shards.py``'s)::

    data/shard-XXXXX.parquet          every shard the manifest lists (nothing else from data/)
    meta/manifest.json                the manifest (shard names rewritten if the layout is chunked)
    meta/rejections.parquet, meta/report/...   everything else under meta/, hidden files excepted
    README.md                         generated dataset card

``.work/``, ``.lock`` and hidden temporary files are private and never published. A folder whose
``.lock`` is held by a running curation job, or whose shards differ from the manifest (size, sha256,
schema version), is refused with a message naming the file.

The card's YAML header declares ``configs`` — ``default`` with one ``train`` split over the shard glob
(and ``rejections`` over ``meta/rejections.parquet``) — so ``datasets.load_dataset(repo_id)`` loads the
shards and nothing else; its body is a readable summary: counts, samples per source and embodiment,
sources, the rejection reasons table, a sample-frame image and a link to the full report.

Files per folder: the Hub refuses more than ~10k entries in one folder. With more shards than
``max_files_per_folder`` the published layout becomes ``data/chunk-CCC/shard-XXXXX.parquet`` with
``shards_per_chunk`` shards per chunk (chunk = position in manifest order // shards_per_chunk), the
published manifest names the new paths (so ``pretrain.data.ShardSet`` reads the repo as is) and the card's
glob becomes ``data/chunk-*/*.parquet``. Small datasets keep the flat layout, identical to the local folder.

Re-publishing keeps the card's YAML fields that an earlier push or the user set (a ``license``, extra
``tags``, ``language``, a nicer ``pretty_name``, …): the card at the target branch (or at ``main`` for a
new branch) is read first, and only what describes the shards (``configs``, ``size_categories``) is
always regenerated; ``--license`` replaces the license, and the generated tags are added to the earlier
ones. The body below the header is regenerated (it summarises the data).

Uploading goes through :func:`pretrain.hub.upload_files`: rounds of commits, unchanged files skipped, the
manifest and card committed last together with the deletion of stale ``data/``/``meta/`` files, retries
that resume after a dropped connection. Re-publishing an unchanged folder makes no commit.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from curation.shards import LEDGER_PATH, LOCK_NAME, MANIFEST_PATH, REPORT_DIR, file_sha256, read_manifest
from schemas import SCHEMA_VERSION, Manifest, check_schema_version
from schemas.hub.card import CARD_NAME, merge_card_header, published_card_header
from schemas.hub.client import PublishResult, Source, UploadSettings, upload_files

HUB_MAX_FILES_PER_FOLDER = 10_000
SHARDS_PER_CHUNK = 1_000
FLAT_GLOB = "data/*.parquet"
CHUNK_TEMPLATE = "data/chunk-{chunk:03d}/{name}"
CHUNK_GLOB = "data/chunk-*/*.parquet"
MANAGED = ("data/*", "meta/*", CARD_NAME)  # remote files under these globs that we no longer have are deleted
CARD_DATA_KEYS = ("configs", "size_categories")  # describe the shards: regenerated on every publish


def _check_not_locked(folder: Path) -> None:
    path = folder / LOCK_NAME
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(
            f"{path}: a curation job is still writing this folder ({path.read_text().strip()}); "
            "publish after it finishes"
        ) from None
    finally:
        os.close(fd)


def _check_shards(folder: Path, manifest: Manifest) -> None:
    """Every manifest shard exists with the recorded size and sha256 and our schema version."""
    if not manifest.shards:
        raise ValueError(f"{folder / MANIFEST_PATH}: the manifest lists no shards; nothing to publish")
    for s in manifest.shards:
        path = folder / s.name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {MANIFEST_PATH} but missing; rerun the curation")
        if s.bytes and path.stat().st_size != s.bytes:
            raise ValueError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {s.bytes}; rerun the curation"
            )
        if file_sha256(path) != s.sha256:
            raise ValueError(f"{path}: sha256 differs from {MANIFEST_PATH}; the shard changed after the run")
        meta = pq.read_schema(path).metadata or {}
        found = meta.get(b"gwp_schema_version")
        check_schema_version(found.decode() if found else None, str(path))


def published_layout(
    shard_names: list[str],
    max_files_per_folder: int = HUB_MAX_FILES_PER_FOLDER,
    per_chunk: int = SHARDS_PER_CHUNK,
) -> tuple[dict[str, str], str]:
    """Local shard name → path in the repo, and the glob that matches them all."""
    if len(shard_names) <= max_files_per_folder:
        return {n: n for n in shard_names}, FLAT_GLOB
    if per_chunk > max_files_per_folder:
        raise ValueError(f"shards_per_chunk {per_chunk} exceeds max_files_per_folder {max_files_per_folder}")
    layout = {
        n: CHUNK_TEMPLATE.format(chunk=i // per_chunk, name=Path(n).name) for i, n in enumerate(shard_names)
    }
    return layout, CHUNK_GLOB


def _size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def render_dataset_card(
    folder: Path,
    manifest: Manifest,
    glob: str,
    repo_id: str,
    license: str | None = None,
    earlier: Mapping[str, Any] | None = None,
) -> str:
    """README.md: YAML header with ``configs`` for ``load_dataset``, then a readable summary
    (``earlier``: the header of the card already published, whose fields are kept)."""
    by_source: Counter[str] = Counter()
    by_embodiment: Counter[str] = Counter()
    for s in manifest.shards:
        cols = pq.read_table(folder / s.name, columns=["source", "embodiment"]).to_pydict()
        by_source.update(cols["source"])
        by_embodiment.update(cols["embodiment"])
    total = sum(s.rows for s in manifest.shards)
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": glob}]}]
    if (folder / LEDGER_PATH).is_file():
        configs.append({"config_name": "rejections", "data_files": [{"split": "train", "path": LEDGER_PATH}]})
    pretty_name = repo_id.split("/")[-1]
    header = {
        "pretty_name": pretty_name,
        "task_categories": ["robotics"],
        "tags": ["robotics", "gigaworld-policy", *sorted(by_embodiment)],
        "size_categories": [_size_category(total)],
        "configs": configs,
    }
    if license:
        header["license"] = license
    chosen = ("license",) if license else ()
    header = merge_card_header(header, earlier or {}, regenerated=CARD_DATA_KEYS, chosen=chosen)
    pretty_name = header.get("pretty_name", pretty_name)
    c = manifest.counts
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {pretty_name}", ""]
    lines += [
        f"Curated robot-learning samples written by gigaworld-policy (schema {manifest.schema_version}, "
        f"code {manifest.code_version}). Each row is one training window: an observation frame and future "
        "frames (`video`, `video_format`), a normalised action chunk padded to 32 dims with its mask, the "
        "normalised state and the instruction.",
        "",
        *_text_encoder_lines(manifest),
        *_latents_lines(manifest),
        "```python",
        "import datasets",
        f'rows = datasets.load_dataset("{repo_id}", split="train")',
        "```",
        "",
        "## Counts",
        "",
        *_table(
            ("what", "in", "kept", "rejected"),
            [
                ("episodes", c["episodes_in"], c["episodes_with_samples"], c["episodes_rejected"]),
                (
                    "windows",
                    c.get("windows_in", "-"),
                    c.get("samples", total),
                    c.get("windows_rejected", "-"),
                ),
            ],
        ),
        "",
        f"{total} samples in {len(manifest.shards)} shards "
        f"({sum((folder / s.name).stat().st_size for s in manifest.shards) / 2**20:.1f} MiB), files `{glob}`.",
        "",
        "## Samples per embodiment",
        "",
        *_table(("embodiment", "samples"), sorted(by_embodiment.items())),
        "",
        "## Samples per source",
        "",
        *_table(("source", "samples"), sorted(by_source.items())),
        "",
    ]
    if manifest.sources:
        lines += ["## Inputs", ""]
        lines += _table(
            ("path", "format", "episodes"),
            [(Path(s.path).name, s.format, s.episodes) for s in manifest.sources],
        )
        lines.append("")
    lines += ["## Rejection reasons", ""]
    reasons = Counter((r.stage, r.reason) for r in manifest.rejections)
    if reasons:
        lines += _table(("stage", "reason", "count"), [(s, r, n) for (s, r), n in sorted(reasons.items())])
        lines += ["", f"Every rejection, with file and episode: `{LEDGER_PATH}` (config `rejections`)."]
    else:
        lines.append("No input was rejected.")
    lines.append("")
    report = folder / REPORT_DIR
    pngs = sorted(report.glob("*.png")) if report.is_dir() else []
    if pngs:
        sample = next((p for p in pngs if p.name == "samples.png"), pngs[0])
        lines += ["## Example frames", "", f"![example frames]({REPORT_DIR}/{sample.name})", ""]
    if (report / "index.md").is_file():
        lines += [f"Full data report: [{REPORT_DIR}/index.md]({REPORT_DIR}/index.md).", ""]
    return "\n".join(lines)


def _text_encoder_lines(manifest: Manifest) -> list[str]:
    """The card's account of how instructions were embedded (the manifest's ``text`` entry)."""
    t = manifest.text
    if not t:
        return []
    e = t["encoder"]
    name = f" `{e['name']}`" + (f" (subfolder `{e['subfolder']}`)" if e.get("subfolder") else "")
    return [
        f"Instructions are embedded once each by the `{e['kind']}` text encoder{name if e['name'] else ''}: "
        f"{len(t['instructions'])} unique instructions, up to {t['tokens']} token states of {t['dim']} dims "
        f"with a mask, in `{t['file']}` (row i = `text.instructions[i]` of the manifest).",
        "",
    ]


def _latents_lines(manifest: Manifest) -> list[str]:
    """The card's account of the stored latents (the manifest's ``latents`` entry), if any."""
    lat = manifest.latents
    if not lat:
        return []
    return [
        f"Every row also stores its frames' latents (`latents`: float32 of `latent_shape` "
        f"{lat.get('latent_shape')}) made by the `{lat['codec']}` codec in the `{lat['geometry']}` video "
        f"geometry (codec key `{lat['key']}`); training with that codec reads them instead of encoding.",
        "",
    ]


def dataset_files(
    folder: str | os.PathLike,
    *,
    max_files_per_folder: int = HUB_MAX_FILES_PER_FOLDER,
    shards_per_chunk: int = SHARDS_PER_CHUNK,
    repo_id: str = "<repo id>",
    license: str | None = None,
    verify: bool = True,
    earlier_card: Mapping[str, Any] | None = None,
) -> dict[str, Source]:
    """Path in repo → local file or generated bytes, for a finished curated dataset folder
    (``earlier_card``: the YAML header of the card already published, see :func:`merge_card_header`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such dataset folder")
    _check_not_locked(folder)
    manifest = read_manifest(folder)
    if verify:
        _check_shards(folder, manifest)
    layout, glob = published_layout([s.name for s in manifest.shards], max_files_per_folder, shards_per_chunk)
    files: dict[str, Source] = {layout[s.name]: folder / s.name for s in manifest.shards}
    meta = folder / "meta"
    for path in sorted(meta.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path
    if any(layout[n] != n for n in layout):
        renamed = [dataclasses.replace(s, name=layout[s.name]) for s in manifest.shards]
        files[MANIFEST_PATH] = dataclasses.replace(manifest, shards=tuple(renamed)).to_json().encode()
    per_folder = Counter(str(Path(p).parent) for p in files)
    crowded = [f"{d}/ ({n})" for d, n in per_folder.items() if n > max_files_per_folder]
    if crowded:
        raise ValueError(f"{folder}: more than {max_files_per_folder} files in {', '.join(crowded)}")
    files[CARD_NAME] = render_dataset_card(folder, manifest, glob, repo_id, license, earlier_card).encode()
    return files


def publish_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    max_files_per_folder: int = HUB_MAX_FILES_PER_FOLDER,
    shards_per_chunk: int = SHARDS_PER_CHUNK,
    settings: UploadSettings | None = None,
) -> PublishResult:
    """Push a curated dataset folder to dataset repo ``repo_id`` at branch ``revision`` (default main)."""
    folder = Path(folder)
    import huggingface_hub

    earlier = published_card_header(repo_id, "dataset", revision, token or huggingface_hub.get_token())
    files = dataset_files(
        folder,
        max_files_per_folder=max_files_per_folder,
        shards_per_chunk=shards_per_chunk,
        repo_id=repo_id,
        license=license,
        earlier_card=earlier,
    )
    return upload_files(
        files,
        repo_id,
        repo_type="dataset",
        revision=revision,
        private=private,
        token=token,
        commit_message=commit_message or f"Publish curated dataset (schema {SCHEMA_VERSION})",
        last=(MANIFEST_PATH, CARD_NAME),
        managed=MANAGED,
        folder=folder,
        settings=settings,
    )
