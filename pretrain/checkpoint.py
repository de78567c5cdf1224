"""Checkpoints of a DeepSpeed training run: save, verify, resume, and the RNG state they carry.

Design: ``engine.save_checkpoint(root, tag="step_%08d", client_state=…)`` writes
model/optimizer/scheduler plus the shared client state (step, EMA unless ZeRO-3, config); each
rank adds ``trainer_rank%05d.pt`` (python/numpy/torch/cuda RNG, data-loader position, its EMA
partition under ZeRO-3). Only when every file is on disk does rank 0 write ``COMPLETE.json``
(file names and sizes) and then move the ``latest`` pointer (atomic rename), so a crash
mid-save never moves ``latest``. Resume walks tags newest first and skips, with a warning, any
tag that is unmarked, has a missing or truncated file, or fails to load; every rank must agree
before a tag is used. The engine is only driven through its methods here: DeepSpeed itself is
imported by ``pretrain/engine.py`` alone.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain import distributed as dd
from pretrain.ema import EMA

if TYPE_CHECKING:
    from pretrain.engine import TrainEngine

log = logging.getLogger(__name__)

CKPT_DIRNAME = "checkpoints"
TAG_FORMAT = "step_{:08d}"
LATEST = "latest"
COMPLETE = "COMPLETE.json"
RANK_FILE = "trainer_rank{:05d}.pt"
CKPT_VERSION = 1


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CKPT_DIRNAME


def tag_for(step: int) -> str:
    return TAG_FORMAT.format(step)


def step_of(tag: str) -> int | None:
    head = TAG_FORMAT.split("{")[0]
    try:
        return int(tag[len(head) :]) if tag.startswith(head) else None
    except ValueError:
        return None


def list_tags(root: Path) -> list[str]:
    """Tag folders under ``root``, newest step first (marked or not)."""
    if not root.is_dir():
        return []
    tags = [d.name for d in root.iterdir() if d.is_dir() and step_of(d.name) is not None]
    return sorted(tags, key=lambda t: step_of(t) or 0, reverse=True)


def read_latest(root: Path) -> str | None:
    p = root / LATEST
    return p.read_text().strip() or None if p.is_file() else None


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def verify_tag(root: Path, tag: str, rank: int) -> str | None:
    """None when the tag is complete on disk for ``rank``; otherwise why it is not."""
    d = root / tag
    marker = d / COMPLETE
    if not marker.is_file():
        return f"{d}: no {COMPLETE} (half-written checkpoint)"
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{marker}: unreadable ({e})"
    for name, size in manifest.get("files", {}).items():
        f = d / name
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != size:
            return f"{f}: {f.stat().st_size} bytes, the checkpoint recorded {size}"
    if RANK_FILE.format(rank) not in manifest.get("files", {}):
        return f"{d}: no {RANK_FILE.format(rank)} for rank {rank} (saved with another world size?)"
    return None


def save_checkpoint(te: TrainEngine, output_dir: str | os.PathLike, step: int, loader: Any = None) -> Path:
    """Collective: every rank calls. Returns the tag folder."""
    root = checkpoint_root(output_dir)
    tag = tag_for(step)
    if te.dist.is_main and (root / tag).exists():  # e.g. redoing steps after a fallback: no stale marker
        shutil.rmtree(root / tag)
    dd.barrier()
    client: dict[str, Any] = {"version": CKPT_VERSION, "step": step, "train_config": te.cfg.to_dict()}
    if te.ema is not None and not te.ema.zero3:
        client["ema"] = te.ema.state_dict()
    te.engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
    rank_state: dict[str, Any] = {"version": CKPT_VERSION, "step": step, "rng": rng_state()}
    if loader is not None and hasattr(loader, "state_dict"):
        rank_state["data"] = loader.state_dict()
    if te.ema is not None and te.ema.zero3:
        rank_state["ema"] = te.ema.state_dict()
    rank_path = root / tag / RANK_FILE.format(te.dist.rank)
    torch.save(rank_state, rank_path.with_suffix(".tmp"))
    os.replace(rank_path.with_suffix(".tmp"), rank_path)
    dd.barrier()
    if te.dist.is_main:
        files = {f.name: f.stat().st_size for f in sorted((root / tag).iterdir()) if f.is_file()}
        atomic_write(root / tag / COMPLETE, json.dumps({"step": step, "files": files}, indent=1))
        atomic_write(root / LATEST, tag)
        complete = [t for t in list_tags(root) if (root / t / COMPLETE).is_file()]
        stale = [t for t in list_tags(root) if t not in complete and (step_of(t) or 0) < step]
        for old in complete[te.cfg.keep_checkpoints :] + stale:
            shutil.rmtree(root / old, ignore_errors=True)
    dd.barrier()
    return root / tag


@dataclass(frozen=True)
class Resumed:
    step: int
    tag: str
    skipped: tuple[str, ...]  # newer tags passed over, with the reason


def load_checkpoint(te: TrainEngine, output_dir: str | os.PathLike, loader: Any = None) -> Resumed | None:
    """Restore the newest usable checkpoint (collective). None when there is none to resume."""
    root = checkpoint_root(output_dir)
    skipped: list[str] = []
    latest = read_latest(root)
    for tag in list_tags(root):
        why = verify_tag(root, tag, te.dist.rank)
        if not dd.all_agree(why is None, te.device):
            skipped.append(f"{tag}: {why or 'incomplete on another rank'}")
            continue
        try:
            path, client = te.engine.load_checkpoint(
                str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if path is None or client is None:
                raise RuntimeError("DeepSpeed found no model states")
            rank_state = torch.load(root / tag / RANK_FILE.format(te.dist.rank), weights_only=False)
            ok = True
        except Exception as e:
            ok, client, rank_state = False, None, None
            skipped.append(f"{tag}: failed to load ({type(e).__name__}: {e})")
        if not dd.all_agree(ok, te.device):
            if ok:
                skipped.append(f"{tag}: failed to load on another rank")
            continue
        ema_state = rank_state.get("ema") if te.ema is not None and te.ema.zero3 else client.get("ema")
        if te.ema is not None and ema_state is None:
            warnings.warn(
                f"{root / tag} holds no EMA: starting it from the resumed weights",
                RuntimeWarning,
                stacklevel=2,
            )
            te.ema = EMA(te.module, te.cfg.ema_decay)
        elif te.ema is not None:
            te.ema.load_state_dict(ema_state)
        if loader is not None and "data" in rank_state and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
        if skipped or (latest is not None and latest != tag):
            msg = f"resumed from {root / tag}, not the newest: " + "; ".join(
                skipped or [f"latest is {latest}"]
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
        return Resumed(int(client["step"]), tag, tuple(skipped))
    if skipped:
        msg = f"no usable checkpoint under {root}: " + "; ".join(skipped)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
    return None
