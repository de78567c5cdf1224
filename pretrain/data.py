"""Resumable training loader over curated shards (ARCHITECTURE.md, "Training").

A curated dataset is ``<dir>/data/*.parquet`` (rows follow ``schemas.Sample.arrow_schema()``)
plus ``<dir>/meta/manifest.json``; ``<dir>`` is a local folder or a Hub dataset repo id
fetched at a revision with ``huggingface_hub.snapshot_download``. The manifest's and every
shard's schema version are checked, failing with a message that names the file.

Order of an epoch — a pure function of ``(seed, epoch)``, never of wall-clock or worker
timing, which is what makes exact resume possible:

1. the shard order is permuted by ``rng(seed, epoch)``;
2. consecutive groups of ``shuffle_shards`` shards form a shuffle buffer whose rows are
   permuted by ``rng(seed, epoch, group)``; the epoch's global row stream is the
   concatenation of the buffers (memory: one buffer of shards per reader);
3. data-parallel rank ``r`` of ``R`` takes stream positions ``r, r+R, r+2R, …`` — disjoint,
   so every row is seen exactly once per epoch across ranks. With ``drop_last`` the stream
   is first cut to a multiple of ``R × batch_size`` so that all ranks have the same number
   of full batches; without it each rank's last batch may be partial (and ranks may differ
   by one batch per epoch, harmless when iterating by steps over endless epochs);
4. a rank's rows are cut into batches; batches are numbered globally across epochs
   (``g = epoch × batches_per_epoch + b``) and dataloader worker ``w`` of ``W`` builds
   batches ``g ≡ w (mod W)``. ``torch.utils.data.DataLoader`` with ``in_order=True`` (its
   default) takes results round-robin from workers, so it yields ``g0, g0+1, …`` — the same
   sequence as ``num_workers=0``, across epoch boundaries too.

Cost of the row-level split: every reader (rank × worker) reads each shard of a buffer it
draws rows from, so shard I/O is multiplied by R × W (a shard stays cached while its buffer
is current). Balanced ranks and exactly-once rows are worth it at this toolkit's scale.

Position and resume: every batch travels with its ``(epoch, batch_in_epoch)``; the
:class:`ShardLoader` in the training process records the position of the last batch it
handed out (not what workers have prefetched). ``state_dict()`` holds that position plus
the settings that determine the order (seed, rank, world size, batch size, shuffle
settings, row count); ``load_state_dict()`` checks them and the next ``iter()`` restarts
exactly at the following batch. The "RNG state" is the seed: the per-epoch generators are
re-derived from ``(seed, epoch)``, so there is no hidden generator state to lose.

Batch contents (B batch, p chunk, K future frames, E text dim; frames channel-first so that
``torch.cat([obs[:, :, None], future], 2)`` is the codec's ``[B, 3, 1+K, H, W]`` input):

    obs_frames [B, 3, H, W] and future_frames [B, 3, K, H, W]   float32 in [-1, 1] (or uint8)
    obs_latents [B, C, 1, h, w] and future_latents [B, C, K, h, w]   from a latent cache or
                                                                   ``video_format == "latent"``
    action [B, p, 32]  action_mask [B, 32]  state [B, 32]  state_mask [B, 32]  embodiment_id [B]
    text_embedding [B, E] + text_embedding_mask [B]   when any row of the batch has one
    sample_id, episode_id, embodiment, instruction, caption: lists of str

Stored latents (``video_format == "latent"``) are raw little-endian float32 (or float16,
told apart by the byte count) of shape ``latent_shape = (C, 1+K, h, w)``.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pretrain.pixels import tensor_to_unit_range
from schemas import MAX_DIM, Manifest, Sample, SchemaError, check_schema_version
from schemas.frames import decode_sample_frames
from schemas.pixels import to_unit_range

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
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"dataset {text!r} is a file; expected a folder with {SHARD_GLOB}")
        return local
    if not _REPO_ID.match(text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"dataset {text!r}: no such local folder, and not a Hub repo id (owner/name)")
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
    # a streamed dataset's row-group source (``pretrain.stream``); None = local files
    stream: Any = field(default=None, compare=False)

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

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
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{mpath}: no manifest; the curation run did not finish (it is written last)"
            )
        try:
            data = json.loads(mpath.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{mpath}: not valid JSON ({err})") from err
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
            missing = set(Sample.arrow_schema().names) - set(schema.names)
            if missing:
                raise SchemaError(str(path), "columns", f"missing {sorted(missing)}")
            n = pq.ParquetFile(path).metadata.num_rows
            if want is not None and n != want:
                raise ValueError(f"{path}: has {n} rows, {mpath} says {want}")
            rows.append(n)
        return cls(root, manifest, shards, tuple(rows))


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


# ---- the order of an epoch ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    shuffle_shards: int = 2  # shards whose rows are shuffled together (the shuffle buffer)
    drop_last: bool = True  # equal full batches on every rank
    num_workers: int = 0
    frames_uint8: bool = False  # keep frames as uint8 [0, 255] (4x less worker→trainer traffic)
    load_frames: bool = True  # decode video bytes into obs_frames / future_frames

    def validate(self) -> LoaderConfig:
        if self.batch_size < 1 or self.shuffle_shards < 1 or self.num_workers < 0:
            raise ValueError(f"LoaderConfig: bad values {self}")
        return self


def epoch_order(rows: Sequence[int], seed: int, epoch: int, shuffle: bool, shuffle_shards: int) -> np.ndarray:
    """``[N, 2]`` int64 (shard index, row) pairs: the global row stream of one epoch."""
    parts = []
    shard_order = (
        np.random.default_rng([seed, epoch]).permutation(len(rows)) if shuffle else np.arange(len(rows))
    )
    for g in range(0, len(shard_order), shuffle_shards):
        group = shard_order[g : g + shuffle_shards]
        pairs = np.concatenate([np.stack([np.full(rows[s], s), np.arange(rows[s])], 1) for s in group])
        if shuffle:
            pairs = pairs[np.random.default_rng([seed, epoch, g // shuffle_shards]).permutation(len(pairs))]
        parts.append(pairs)
    return np.concatenate(parts).astype(np.int64)


def rank_positions(num_rows: int, rank: int, world_size: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """Stream positions of ``rank`` (strided, disjoint across ranks)."""
    n = (num_rows // (world_size * batch_size)) * world_size * batch_size if drop_last else num_rows
    return np.arange(rank, n, world_size, dtype=np.int64)


# ---- the stream (runs in dataloader workers) ----------------------------------------------------


class ShardStream(torch.utils.data.IterableDataset):
    """Yields ``((epoch, batch_in_epoch), batch)`` from global batch ``start`` on, split over workers."""

    def __init__(
        self,
        shards: ShardSet,
        cfg: LoaderConfig,
        rank: int,
        world_size: int,
        start: int = 0,
        stop: int | None = None,
        latent_cache: Any = None,
    ):
        self.shards, self.cfg, self.rank, self.world_size = shards, cfg, rank, world_size
        self.start, self.stop, self.latent_cache = start, stop, latent_cache
        self.positions = rank_positions(shards.num_rows, rank, world_size, cfg.batch_size, cfg.drop_last)
        self.batches_per_epoch = -(-len(self.positions) // cfg.batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{shards.root}: {shards.num_rows} rows give rank {rank} of {world_size} no batch of {cfg.batch_size}"
            )
        self._order: tuple[int, np.ndarray] | None = None
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()
        self._latents: OrderedDict[int, Any] = OrderedDict()

    def batch_pairs(self, epoch: int, b: int) -> np.ndarray:
        """``[n, 2]`` (shard, row) pairs of batch ``b`` of ``epoch`` on this rank."""
        if self._order is None or self._order[0] != epoch:
            c = self.cfg
            self._order = (epoch, epoch_order(self.shards.rows, c.seed, epoch, c.shuffle, c.shuffle_shards))
        pos = self.positions[b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
        return self._order[1][pos]

    def _table(self, shard: int) -> pa.Table:
        if shard in self._tables:
            self._tables.move_to_end(shard)
            return self._tables[shard]
        cols = [n for n in Sample.arrow_schema().names if self.cfg.load_frames or n != "video"]
        if self.shards.stream is not None:  # fetches only the row groups a batch takes
            sel = None if self.shards.selection is None else self.shards.selection[shard]
            return self.shards.stream.shard(shard, cols, sel)
        table = pq.read_table(self.shards.shards[shard], columns=cols)
        if self.shards.selection is not None:
            table = table.take(pa.array(self.shards.selection[shard], type=pa.int64()))
        self._tables[shard] = table
        while len(self._tables) > self.cfg.shuffle_shards + 1:
            self._tables.popitem(last=False)
        return table

    def _cached_latents(self, shard: int, ids: list[str]) -> torch.Tensor:
        if shard not in self._latents:
            path = self.shards.shards[shard]
            self._latents[shard] = self.latent_cache.get_or_encode(path)
            while len(self._latents) > self.cfg.shuffle_shards + 1:
                self._latents.popitem(last=False)
        return self._latents[shard].lookup(ids, where=f"latent cache of {self.shards.shards[shard]}")

    def __iter__(self) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        w, nw = (0, 1) if info is None else (info.id, info.num_workers)
        g = self.start + w
        while self.stop is None or g < self.stop:
            epoch, b = divmod(g, self.batches_per_epoch)
            yield (epoch, b), self.make_batch(self.batch_pairs(epoch, b))
            g += nw

    def make_batch(self, pairs: np.ndarray) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        where: list[str] = []
        latents: list[torch.Tensor] = []
        for shard in dict.fromkeys(pairs[:, 0].tolist()):  # shards in first-seen order
            idx = np.nonzero(pairs[:, 0] == shard)[0]
            part = self._table(shard).take(pa.array(pairs[idx, 1])).to_pylist()
            rows.extend(part)
            where.extend([str(self.shards.shards[shard])] * len(part))
            if self.latent_cache is not None:
                latents.append(self._cached_latents(shard, [r["sample_id"] for r in part]))
        # restore the stream order (rows were gathered shard by shard)
        order = np.concatenate([np.nonzero(pairs[:, 0] == s)[0] for s in dict.fromkeys(pairs[:, 0].tolist())])
        inv = np.argsort(order)
        rows = [rows[i] for i in inv]
        where = [where[i] for i in inv]
        lat = torch.cat(latents)[torch.from_numpy(inv)] if latents else None
        return collate(rows, where, self.cfg, lat)


def _stack(name: str, values: list[np.ndarray], where: list[str], rows: list[dict[str, Any]]) -> torch.Tensor:
    shapes = {v.shape for v in values}
    if len(shapes) > 1:
        first = values[0].shape
        i = next(i for i, v in enumerate(values) if v.shape != first)
        raise SchemaError(
            where[i], name, f"sample {rows[i]['sample_id']} has shape {values[i].shape}, batch has {first}"
        )
    return torch.from_numpy(np.stack(values))


def collate(
    rows: list[dict[str, Any]], where: list[str], cfg: LoaderConfig, latents_BCFhw: torch.Tensor | None = None
) -> dict[str, Any]:
    """Shard rows (``Sample.to_row`` dicts) → one batch of tensors; see the module docstring."""
    out: dict[str, Any] = {
        k: [r[k] for r in rows] for k in ("sample_id", "episode_id", "embodiment", "instruction", "caption")
    }
    out["embodiment_id"] = torch.tensor([r["embodiment_id"] for r in rows], dtype=torch.long)
    actions = [np.asarray(r["action"], dtype=np.float32).reshape(-1, MAX_DIM) for r in rows]
    out["action"] = _stack("action", actions, where, rows)
    for name, dtype in (("action_mask", bool), ("state", np.float32), ("state_mask", bool)):
        out[name] = _stack(name, [np.asarray(r[name], dtype=dtype) for r in rows], where, rows)
    embs = [r["text_embedding"] for r in rows]
    if any(e is not None for e in embs):
        dim = len(next(e for e in embs if e is not None))
        vals = [np.zeros(dim, np.float32) if e is None else np.asarray(e, np.float32) for e in embs]
        out["text_embedding"] = _stack("text_embedding", vals, where, rows)
        out["text_embedding_mask"] = torch.tensor([e is not None for e in embs])

    num_frames = [len(r["frame_indices"]) for r in rows]
    if latents_BCFhw is None and rows[0]["video_format"] == "latent":
        lat = []
        for r, src in zip(rows, where, strict=True):
            if r["video_format"] != "latent":
                raise SchemaError(
                    src, "video_format", f"sample {r['sample_id']} is {r['video_format']!r} in a latent batch"
                )
            lat.append(decode_latents(r["video"], r["latent_shape"]))
        latents_BCFhw = _stack("latent_shape", lat, where, rows)
    if latents_BCFhw is not None:
        if latents_BCFhw.shape[2] != num_frames[0]:
            raise ValueError(
                f"{where[0]}: latents have {latents_BCFhw.shape[2]} frames for {num_frames[0]} sample frames; "
                "the loader needs a frame-by-frame codec"
            )
        out["obs_latents"] = latents_BCFhw[:, :, :1]
        out["future_latents"] = latents_BCFhw[:, :, 1:]
    elif cfg.load_frames:
        frames = []
        for r, src, n in zip(rows, where, num_frames, strict=True):
            try:
                frames.append(decode_row_frames(r["video"], r["video_format"], n, r["height"], r["width"]))
            except ValueError as err:
                raise ValueError(f"{src}: sample {r['sample_id']}: {err}") from err
        f_BFHWC = _stack("video", frames, where, rows)
        f_BCFHW = f_BFHWC.permute(0, 4, 1, 2, 3)
        if not cfg.frames_uint8:
            f_BCFHW = tensor_to_unit_range(f_BCFHW)
        out["obs_frames"] = f_BCFHW[:, :, 0].contiguous()
        out["future_frames"] = f_BCFHW[:, :, 1:].contiguous()
    return out


# ---- the resumable loader (training process) ------------------------------------------------------

_ORDER_KEYS = (
    "seed",
    "rank",
    "world_size",
    "batch_size",
    "shuffle",
    "shuffle_shards",
    "drop_last",
    "num_rows",
)


class ShardLoader:
    """Iterate batches of one data-parallel rank; report and restore the exact position.

    ``epochs=None`` iterates endlessly (step-based training); otherwise it stops after that
    many epochs counted from epoch 0. Each ``iter()`` continues from the current position.
    """

    def __init__(
        self,
        source: str | os.PathLike | ShardSet,
        cfg: LoaderConfig = LoaderConfig(),
        *,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        revision: str | None = None,
        latent_cache: Any = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards = source if isinstance(source, ShardSet) else ShardSet.open(source, revision)
        self.cfg = cfg.validate()
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self.latent_cache = latent_cache
        if latent_cache is not None and self.shards.stream is not None:
            raise ValueError(
                f"{self.shards.root}: a latent cache needs local shards; this dataset is streamed"
            )
        self._probe = ShardStream(self.shards, cfg, rank, world_size)
        self.batches_per_epoch = self._probe.batches_per_epoch
        self._next = 0  # global index of the next batch to hand out

    @property
    def epoch(self) -> int:
        return self._next // self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stop = None if self.epochs is None else self.epochs * self.batches_per_epoch
        stream = ShardStream(
            self.shards, self.cfg, self.rank, self.world_size, self._next, stop, self.latent_cache
        )
        if self.cfg.num_workers > 0:
            it: Any = torch.utils.data.DataLoader(
                stream,
                batch_size=None,
                num_workers=self.cfg.num_workers,
                in_order=True,  # round-robin over workers = the single-process batch order
                persistent_workers=False,
            )
        else:
            it = stream
        for (epoch, b), batch in it:
            g = epoch * self.batches_per_epoch + b
            if g != self._next:  # would mean workers delivered out of order: never resume wrongly
                raise RuntimeError(f"data loader delivered batch {g}, expected {self._next}")
            self._next = g + 1
            yield batch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        epoch, b = divmod(self._next, self.batches_per_epoch)
        pos = self._probe.positions
        if b * self.cfg.batch_size < len(pos):
            shard, row = (int(v) for v in self._probe.batch_pairs(epoch, b)[0])
        else:
            shard, row = -1, -1
        c = asdict(self.cfg)
        where = {}
        if self.shards.stream is not None and shard >= 0:  # streamed: the row group it starts in
            actual = row if self.shards.selection is None else self.shards.selection[shard][row]
            group, in_group = self.shards.stream.locate(shard, actual)
            where = {"row_group": group, "row_in_group": in_group}
        return {
            "version": 1,
            "epoch": epoch,
            "batch_in_epoch": b,
            "shard_index": shard,  # informational: where the next batch's first row lives
            "row_offset": row,
            **where,
            "rng": {"kind": "numpy.PCG64([seed, epoch(, buffer)])", "seed": c["seed"]},
            **{k: c[k] for k in _ORDER_KEYS if k in c},
            "rank": self.rank,
            "world_size": self.world_size,
            "num_rows": self.shards.num_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state.get("version") != 1:
            raise ValueError(f"data loader state: unknown version {state.get('version')!r}")
        diff = [
            f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in _ORDER_KEYS if state.get(k) != mine[k]
        ]
        if diff:
            raise ValueError(
                "data loader state does not match this loader (the order would differ): " + "; ".join(diff)
            )
        self._next = int(state["epoch"]) * self.batches_per_epoch + int(state["batch_in_epoch"])
