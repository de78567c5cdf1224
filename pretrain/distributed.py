"""Process-group helpers: who am I, how many are we, and which backend fits this machine.

The training code runs the same way under three launchers:

* ``deepspeed --num_gpus N --module pipelines.pretrain …`` — sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and also passes ``--local_rank=N`` on the
  command line (drivers must accept and may ignore that flag; the environment wins; or add
  ``--no_local_rank``). DeepSpeed 0.19.8's launcher rejects ``-m``: the flag is ``--module``.
  On a CPU-only machine the launcher counts one "device", so ``--num_gpus N`` is what asks
  for N processes (it then sets a meaningless ``CUDA_VISIBLE_DEVICES=0..N-1``; harmless);
  no ``--num_nodes``, hostfile or core binding is needed. Pass ``--master_port`` when
  several jobs share a machine (default 29500).
* ``torchrun --nproc_per_node N -m pipelines.pretrain …`` — sets the same variables.
* several nodes: ``torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint
  HOST:PORT …`` on every node, or ``deepspeed --hostfile H …`` (with ``--no_ssh --node_rank i
  --master_addr HOST`` on every node when there is no passwordless ssh). ``RANK`` is global,
  ``LOCAL_RANK`` per node; nothing here assumes the ranks share a machine (the recipes:
  ``scripts/launch_slurm.sh``, ``scripts/launch_kuberay.sh``).
* plain ``python -m …`` — no variables at all: :func:`init_distributed` then forms a
  world of one on 127.0.0.1 with a free port, so DeepSpeed never goes looking for MPI.

Backend: ``nccl`` when CUDA is usable, ``gloo`` otherwise (DeepSpeed's CPU accelerator
speaks gloo). Nothing here imports DeepSpeed: the engine module builds on these helpers.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# set beside MASTER_PORT when this process formed its own world of one, so that a child process
# that inherits the variables knows they are not a launcher's
_SOLO_MARK = "GWP_SOLO_MASTER_PORT"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl" | "gloo"
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def env_rank() -> int:
    return _env_int("RANK", 0)


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def env_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def launched() -> bool:
    """True when a launcher (deepspeed, torchrun) has set the rendezvous variables."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else env_rank()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else env_world_size()


def is_main() -> bool:
    return rank() == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise ``torch.distributed`` once (idempotent) and return this process's place.

    Without launcher variables a world of one is formed on a free local port. On CUDA each
    process binds to ``cuda:LOCAL_RANK``.
    """
    backend = backend or default_backend()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA; this process sees no GPU (use 'gloo')")
    if not dist.is_initialized():
        if os.environ.get(_SOLO_MARK) is not None and os.environ.get(_SOLO_MARK) == os.environ.get(
            "MASTER_PORT"
        ):
            # the variables of a parent process's own world of one (it trained in-process, then
            # started this one), not a launcher's: the parent still holds that port
            for k in (*_ENV_KEYS, _SOLO_MARK):
                os.environ.pop(k, None)
        own_port = not launched() and "MASTER_PORT" not in os.environ
        if not launched():
            if env_world_size() != 1:
                missing = [k for k in _ENV_KEYS if k not in os.environ]
                raise RuntimeError(
                    f"WORLD_SIZE={env_world_size()} but launcher variables are missing: {missing}"
                )
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            if own_port:
                os.environ[_SOLO_MARK] = os.environ["MASTER_PORT"]
        if backend == "nccl":
            torch.cuda.set_device(env_local_rank())
        for attempt in range(5):
            try:
                dist.init_process_group(
                    backend=backend,
                    rank=env_rank(),
                    world_size=env_world_size(),
                    timeout=datetime.timedelta(seconds=timeout_s),
                )
                break
            except dist.DistNetworkError:
                # the free port we picked was taken before the store bound it (another
                # process on this machine, e.g. a Ray worker): pick another, a few times
                if not own_port or attempt == 4:
                    raise
                os.environ["MASTER_PORT"] = os.environ[_SOLO_MARK] = str(free_port())
    actual = dist.get_backend()
    device = torch.device("cuda", env_local_rank()) if actual == "nccl" else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), env_local_rank(), actual, device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Average a few scalars over ranks (one collective)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only if every rank passes True (a logical AND over ranks)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
