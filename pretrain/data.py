"""Resumable training loader over curated shards (ARCHITECTURE.md, "Training").

Three modules: :mod:`pretrain.shards` opens a dataset (manifest, shards, text store, frame
bytes), :mod:`pretrain.batching` turns rows into a batch of tensors, and this one decides the
order and hands batches out; its public names are re-exported here.

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

Batch contents: :mod:`pretrain.batching`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pretrain.batching import collate, text_lookup
from pretrain.shards import (
    HUB_PATTERNS,
    MANIFEST_FILE,
    SHARD_GLOB,
    ShardSet,
    decode_latents,
    decode_row_frames,
    iter_shard_frames,
    resolve_dataset,
)

__all__ = [
    "HUB_PATTERNS",
    "MANIFEST_FILE",
    "SHARD_GLOB",
    "LoaderConfig",
    "ShardLoader",
    "ShardSet",
    "ShardStream",
    "collate",
    "decode_latents",
    "decode_row_frames",
    "epoch_order",
    "iter_shard_frames",
    "rank_positions",
    "resolve_dataset",
    "text_lookup",
]


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
        if shards.text is None:
            raise ValueError(
                f"{shards.root}/{MANIFEST_FILE}: no instruction token states (manifest 'text'); "
                "curate the dataset again with this version"
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
        cols = self.shards.columns(frames=self.cfg.load_frames)
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
        return collate(rows, where, self.cfg, lat, self.shards.text)


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
