"""Opening a curated dataset: its manifest, shards, instruction token states, and frame bytes.

A curated dataset is ``<dir>/data/*.parquet`` (rows follow ``schemas.Sample.arrow_schema()``)
plus ``<dir>/meta/manifest.json`` and the instructions' token states
``<dir>/meta/text_embeddings.safetensors`` (:mod:`schemas.text_store`, indexed by the
manifest's ``text``); ``<dir>`` is a local folder or a Hub dataset repo id fetched at a revision
with ``huggingface_hub.snapshot_download``. The manifest's and every shard's schema version are
checked, failing with a message that names the file.

Stored latents (``video_format == "latent"``) are raw little-endian float32 (or float16,
told apart by the byte count) of shape ``latent_shape = (C, 1+K, h, w)``. Latents stored beside
the frames by curation's latent stage (the ``latents`` column, schema 3.1) are float32 of
``latent_shape`` (:mod:`schemas.latents`); the manifest's ``latents`` names their codec
(``ShardSet.latents``), which a trainer checks against its own
(:func:`pretrain.stored_latents.check_stored_latents`). Shards written before 3.1 lack the column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pretrain.hub import read_json_object
from schemas import Manifest, Sample, SchemaError, check_schema_version
from schemas.frames import decode_sample_frames
from schemas.hub.client import local_folder
from schemas.pixels import to_unit_range
from schemas.sample import OPTIONAL_COLUMNS
from schemas.text_store import TextStore

SHARD_GLOB = "data/*.parquet"
MANIFEST_FILE = "meta/manifest.json"
HUB_PATTERNS = ("data/*.parquet", "meta/*")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---- locating a dataset ----------------------------------------------------------------------


def resolve_dataset(
    source: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local folder as is; otherwise a Hub dataset repo id, downloaded at ``revision``."""
    text = str(source)
    local = local_folder(text, f"a dataset folder with {SHARD_GLOB}", _REPO_ID)
    if local is not None:
        return local
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = huggingface_hub.snapshot_download(
            repo_id=text,
            repo_type="dataset",
            revision=revision,
            allow_patterns=list(HUB_PATTERNS),
            cache_dir=cache_dir,
        )
    except (HfHubHTTPError, OSError, ValueError) as err:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise RuntimeError(
            f"dataset {text!r} (revision {revision or 'main'}): not a local folder, and downloading it as a "
            f"Hub dataset repo from {endpoint} failed: {type(err).__name__}: {err}"
        ) from err
    return Path(path)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one curated dataset, in manifest order, with their row counts."""

    root: Path
    manifest: Manifest
    shards: tuple[Path, ...]
    rows: tuple[int, ...]
    # rows kept of each shard (ascending row numbers), None = all rows; see :meth:`select`
    selection: tuple[tuple[int, ...], ...] | None = field(default=None, compare=False)
    # the instructions' token states; None for a manifest without a text index (refused by the loader)
    text: TextStore | None = field(default=None, compare=False)
    # a streamed dataset's row-group source (``pretrain.stream``); None = local files
    stream: Any = field(default=None, compare=False)

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    @property
    def latents(self) -> dict[str, Any] | None:
        """The codec of the samples' stored latents (the manifest's ``latents``), None without them."""
        return self.manifest.latents or None

    def columns(self, frames: bool = True) -> list[str]:
        """The Sample columns a loader reads: the video only with ``frames``, the stored latents
        only where the dataset has them (older shards lack the column)."""
        names = Sample.arrow_schema().names
        return [n for n in names if (frames or n != "video") and (n != "latents" or self.latents)]

    def select(self, keep_rows: Sequence[Sequence[int]]) -> ShardSet:
        """A view holding only ``keep_rows[i]`` (row numbers) of shard ``i`` (a held-out split, a subset).

        The loader reads the whole shard and takes the kept rows, in ascending order; nothing is copied.
        """
        if len(keep_rows) != len(self.shards):
            raise ValueError(f"{self.root}: select needs one row list per shard ({len(self.shards)})")
        kept = []
        for i, rows in enumerate(keep_rows):
            base = self.selection[i] if self.selection is not None else range(self.rows[i])
            r = sorted({int(x) for x in rows})
            if r and (r[0] < 0 or r[-1] >= len(base)):
                raise ValueError(f"{self.shards[i]}: selected rows outside [0, {len(base)})")
            kept.append(tuple(base[x] for x in r))
        return replace(self, rows=tuple(len(k) for k in kept), selection=tuple(kept))

    @classmethod
    def open(
        cls,
        source: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        stream: Any = None,
    ) -> ShardSet:
        """``stream`` (a ``pretrain.stream.StreamConfig``) streams a Hub repo id; a URL always streams."""
        from pretrain.stream import is_url, open_streaming

        if stream is not None or is_url(str(source)):
            if stream is not None and Path(str(source)).expanduser().is_dir():
                return cls.open(source, revision, cache_dir)  # a local folder is read in place
            return open_streaming(str(source), revision, stream)
        root = resolve_dataset(source, revision, cache_dir)
        mpath = root / MANIFEST_FILE
        data = read_json_object(mpath, "no manifest; the curation run did not finish (it is written last)")
        check_schema_version(data.get("schema_version"), str(mpath))
        try:
            manifest = Manifest.from_dict(data, str(mpath))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{mpath}: malformed manifest, missing or bad field {err}") from err
        if manifest.shards:
            shards = tuple(root / s.name for s in manifest.shards)
            expected: list[int | None] = [s.rows for s in manifest.shards]
        else:
            shards = tuple(sorted(root.glob(SHARD_GLOB)))
            expected = [None] * len(shards)
        if not shards:
            raise FileNotFoundError(f"{root}: no shards ({SHARD_GLOB})")
        rows = []
        for path, want in zip(shards, expected, strict=True):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {mpath} but missing")
            schema = pq.read_schema(path)
            meta = schema.metadata or {}
            found = meta.get(b"gwp_schema_version")
            check_schema_version(found.decode() if found else None, str(path))
            missing = set(Sample.arrow_schema().names) - set(schema.names) - set(OPTIONAL_COLUMNS)
            if missing:
                raise SchemaError(str(path), "columns", f"missing {sorted(missing)}")
            n = pq.ParquetFile(path).metadata.num_rows
            if want is not None and n != want:
                raise ValueError(f"{path}: has {n} rows, {mpath} says {want}")
            rows.append(n)
        text = TextStore.read(root, manifest.text, str(mpath)) if manifest.text else None
        return cls(root, manifest, shards, tuple(rows), text=text)


# ---- frames ------------------------------------------------------------------------------------


def decode_row_frames(video: bytes, fmt: str, num_frames: int, height: int, width: int) -> np.ndarray:
    """``uint8 [F, H, W, 3]`` RGB frames of one Sample's ``video`` bytes, checked against the row.

    Decoding is the writer's own inverse, :func:`schemas.frames.decode_sample_frames`
    (png: one tall PNG of F·H rows with a ``gwp_frames`` text chunk; mp4: PyAV).
    """
    frames = np.asarray(decode_sample_frames(video, fmt))
    if frames.shape != (num_frames, height, width, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"decoded {fmt} frames have shape {frames.shape} {frames.dtype}, "
            f"expected ({num_frames}, {height}, {width}, 3) uint8"
        )
    return frames


def decode_latents(video: bytes, latent_shape: Sequence[int]) -> np.ndarray:
    n = int(np.prod(latent_shape))
    dtype = {4 * n: "<f4", 2 * n: "<f2"}.get(len(video))
    if dtype is None:
        raise ValueError(f"latent bytes: {len(video)} bytes do not fit latent_shape {tuple(latent_shape)}")
    return np.frombuffer(video, dtype=dtype).astype(np.float32).reshape(tuple(latent_shape))


def iter_shard_frames(
    shard_path: str | os.PathLike, batch_size: int
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``(sample_ids, frames [N, 3, F, H, W] in [-1, 1])`` over one shard, in row order (latent caching)."""
    pf = pq.ParquetFile(shard_path)
    cols = ["sample_id", "video", "video_format", "frame_indices", "height", "width"]
    for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
        rows = rb.to_pylist()
        frames = []
        for r in rows:
            try:
                f = decode_row_frames(
                    r["video"], r["video_format"], len(r["frame_indices"]), r["height"], r["width"]
                )
            except ValueError as err:
                raise ValueError(f"{shard_path}: sample {r['sample_id']}: {err}") from err
            frames.append(f)
        if len({f.shape for f in frames}) > 1:
            raise ValueError(
                f"{shard_path}: frames of different shapes in one batch: {sorted({f.shape for f in frames})}"
            )
        x_NFHWC = torch.from_numpy(to_unit_range(np.stack(frames)))
        yield [r["sample_id"] for r in rows], x_NFHWC.permute(0, 4, 1, 2, 3).contiguous()
