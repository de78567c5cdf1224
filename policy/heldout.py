"""Held-out episodes during fine-tuning: a deterministic split and a periodic action-error check.

Design:

* **Split by episode, not by sample.** Windows of one episode overlap (stride < chunk), so a
  sample-level split would leak nearly identical windows into the held-out set. Every unique
  ``episode_id`` gets the rank of ``sha256(f"{seed}:{episode_id}")``; the first
  ``round(fraction · N)`` (at least 1, at most N − 1) are held out. The result depends only on the
  set of episode ids, the fraction and the seed — not on shard layout or row order.
* **No copies.** Both halves are :meth:`pretrain.data.ShardSet.select` views of the curated shards
  (row numbers per shard), so the training loader reads the same files.
* **The check** (:class:`HeldoutEvaluator`): a fixed, evenly spread subset of held-out samples,
  action-only decoding with 10 Euler steps and fixed noise (:mod:`policy.openloop`), MSE per valid
  dim in normalised and robot units. Run every ``eval_every`` optimizer steps from inside the
  trainer's loss function (:meth:`HeldoutEvaluator.hook`), keyed on the engine's own step counter
  so a resumed run continues the curve; it draws no numbers from the global RNG, so training with
  and without the check is the same run. One JSON line per check goes to ``heldout.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy.model import GWPPolicyModel
from policy.openloop import OpenLoopConfig, evaluate_openloop
from pretrain.data import ShardSet
from pretrain.stream import read_shard_columns

HELDOUT_FILE = "heldout.jsonl"


def heldout_episodes(episode_ids: Iterable[str], fraction: float, seed: int = 0) -> list[str]:
    """Sorted ids of the held-out episodes (see the module docstring); ``[]`` for fraction 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    ids = sorted(set(episode_ids))
    if fraction == 0:
        return []
    if len(ids) < 2:
        raise ValueError(f"a held-out split needs at least 2 episodes, the data has {len(ids)}")
    n = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    ranked = sorted(ids, key=lambda e: hashlib.sha256(f"{seed}:{e}".encode()).hexdigest())
    return sorted(ranked[:n])


@dataclass(frozen=True)
class Split:
    train: ShardSet
    heldout: ShardSet | None
    heldout_episodes: tuple[str, ...]
    train_episodes: int

    def record(self, fraction: float, seed: int) -> dict[str, Any]:
        """What the run record keeps: enough to rebuild the split (and to evaluate on it later)."""
        return {
            "fraction": fraction,
            "seed": seed,
            "train_episodes": self.train_episodes,
            "train_rows": self.train.num_rows,
            "heldout_rows": self.heldout.num_rows if self.heldout else 0,
            "episodes": list(self.heldout_episodes),
        }


def episode_column(shards: ShardSet) -> list[np.ndarray]:
    """``episode_id`` of every row, per shard (honouring an existing selection)."""
    out = []
    for i, path in enumerate(shards.shards):
        col = np.asarray(read_shard_columns(path, ["episode_id"]).column(0).to_pylist(), dtype=object)
        out.append(col if shards.selection is None else col[list(shards.selection[i])])
    return out


def select_episodes(shards: ShardSet, episodes: Iterable[str], keep: bool = True) -> ShardSet:
    """The rows of ``shards`` whose episode is (``keep``) or is not (not ``keep``) in ``episodes``."""
    chosen = set(episodes)
    rows = [np.flatnonzero(np.isin(col, list(chosen)) == keep) for col in episode_column(shards)]
    return shards.select(rows)


def split_shards(shards: ShardSet, fraction: float, seed: int = 0) -> Split:
    """Train / held-out views of a curated dataset, split by episode."""
    cols = episode_column(shards)
    all_ids = set().union(*(set(c.tolist()) for c in cols))
    held = heldout_episodes(all_ids, fraction, seed)
    if not held:
        return Split(shards, None, (), len(all_ids))
    is_held = [np.isin(c, held) for c in cols]
    train = shards.select([np.flatnonzero(~m) for m in is_held])
    heldout = shards.select([np.flatnonzero(m) for m in is_held])
    return Split(train, heldout, tuple(held), len(all_ids) - len(held))


class HeldoutEvaluator:
    """Action error of a model on a fixed held-out subset, logged to ``<out>/heldout.jsonl``."""

    def __init__(
        self,
        heldout: ShardSet,
        out_dir: str | Path | None = None,
        *,
        max_samples: int = 64,
        batch_size: int = 16,
        num_steps: int = 10,
        noise_seed: int = 0,
    ) -> None:
        self.shards = heldout
        self.cfg = OpenLoopConfig(
            max_samples=max_samples,
            batch_size=batch_size,
            num_steps=num_steps,
            noise_seed=noise_seed,
            video=False,
        )
        self.path = Path(out_dir) / HELDOUT_FILE if out_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self._done: set[int] = set()

    def evaluate(self, model: GWPPolicyModel, step: int, **extra: Any) -> dict[str, Any]:
        """One check; the record (step, action_mse, action_mse_robot, per-dim MSE) is appended."""
        t0 = time.perf_counter()
        metrics, _ = evaluate_openloop(model, self.shards, self.cfg)
        per = {
            name: {"dims": d["dims"], "mse": d["mse"], "mse_robot": d["mse_robot"]}
            for name, d in metrics["per_embodiment"].items()
        }
        rec = {
            "step": step,
            **extra,
            "action_mse": metrics["action_mse"],
            "action_mse_robot": metrics["action_mse_robot"],
            "per_embodiment": per,
            "samples": metrics["samples"],
            "eval_s": time.perf_counter() - t0,
        }
        self.history.append(rec)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def hook(self, every: int, log: Callable[[str], None] | None = None) -> Callable[[Any], None]:
        """A callable for the trainer's loss function: ``hook(engine)`` checks the engine's module
        when the engine's optimizer-step counter is a new multiple of ``every`` (step 0 included)."""
        if every < 1:
            raise ValueError(f"eval_every must be ≥ 1, got {every}")
        if self.path is not None and self.path.is_file():  # resumed run: keep the curve, no repeats
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self._done.add(int(json.loads(line)["step"]))

        def run(engine: Any) -> None:
            step = int(getattr(engine, "global_steps", 0))
            if step % every or step in self._done:
                return
            self._done.add(step)
            with torch.no_grad():
                rec = self.evaluate(engine.module, step)
            if log is not None:
                log(
                    f"held-out step {step}: action MSE {rec['action_mse']:.4f} (normalised), "
                    f"{rec['action_mse_robot']:.5f} (robot units), {rec['eval_s']:.1f}s"
                )

        return run

    def config_record(self) -> dict[str, Any]:
        return asdict(self.cfg)
