"""The training loop: any ``nn.Module`` plus a loss function, driven by a ``TrainConfig``.

``Trainer(model, loss_fn, loader, cfg).fit()`` does, in order:

1. forms the process group (world of one without a launcher; gloo on CPU, nccl on GPU),
   seeds python/numpy/torch with ``seed + rank`` and wraps the model (``pretrain/engine.py``);
2. writes the resolved configuration to ``<output_dir>/run_config.json`` (every run leaves a
   record) and, if a checkpoint exists, resumes from the newest complete one;
3. per optimizer step: ``grad_accum`` micro-batches of ``loss_fn(engine, batch)`` →
   ``engine.backward`` → ``engine.step`` (DeepSpeed clips, steps and schedules at the
   accumulation boundary), then the EMA update;
4. appends one JSON line per step to ``<output_dir>/metrics.jsonl``: step, loss (mean over
   micro-batches and ranks), any extra terms the loss function returns, lr, grad norm,
   step time, samples/s; prints a progress line every ``log_every`` steps (rank 0);
5. checkpoints every ``ckpt_every`` steps and at the end, then exports ``model.safetensors``
   + ``config.json`` into ``<output_dir>/final``.

The loss function gets the DeepSpeed engine (call it like the model) and the batch already
moved to the engine's device, and returns a scalar tensor or ``(scalar, {name: tensor|float})``.
The loader is any iterable of batches; if it has ``state_dict``/``load_state_dict``
(``pretrain.data.ShardLoader`` does) its position is saved per rank and restored on resume,
which together with the RNG states makes a resumed run repeat the uninterrupted one exactly.
When a loader runs out it is iterated again (the next epoch).

Launch (measured with DeepSpeed 0.19.8 on a CPU-only machine; the same on GPUs):

    python -m pipelines.pretrain …                                     # world of one
    deepspeed --num_gpus N [--master_port P] --module pipelines.pretrain …   # not "-m"
    torchrun --nproc_per_node N [--master_port P] -m pipelines.pretrain …
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain import distributed as dd
from pretrain.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from pretrain.engine import TrainEngine, build_engine, export_weights
from pretrain.run_config import TrainConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"
FINAL_DIRNAME = "final"

LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]
LossFn = Callable[[Any, Any], LossOut]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


@dataclass
class TrainResult:
    steps: int  # optimizer steps done when fit() returned
    resumed_from: int | None  # step of the checkpoint resumed from
    history: list[dict[str, Any]] = field(default_factory=list)  # this process's records (rank 0 complete)
    final_dir: Path | None = None
    mean_step_s: float | None = None  # steady-state step time (first step excluded when possible)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        loader: Iterable[Any],
        cfg: TrainConfig,
        *,
        config_record: dict[str, Any] | None = None,
        progress: bool = True,
        backend: str | None = None,
    ) -> None:
        """``config_record``: extra resolved configuration (model, data, flow …) stored with the run."""
        self.cfg = cfg.validate()
        self.loss_fn = loss_fn
        self.loader = loader
        self.config_record = dict(config_record or {})
        self.progress = progress
        self.out = Path(cfg.output_dir)
        self.info = dd.init_distributed(backend)
        seed_everything(cfg.seed + self.info.rank)
        self.te: TrainEngine = build_engine(model, cfg, self.info)

    # ----------------------------------------------------------------- records

    def _write_run_config(self) -> None:
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            **self.config_record,
            "train": self.cfg.to_dict(),
            "precision": self.te.precision,
            "world_size": self.info.world_size,
            "backend": self.info.backend,
            "deepspeed": self.te.ds_config,
            "argv": sys.argv,
        }
        (self.out / RUN_CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))

    def _trim_metrics(self, keep_upto: int) -> None:
        """On resume, drop history lines past the checkpoint so the file reads as one run."""
        p = self.out / METRICS_FILE
        if not (self.info.is_main and p.is_file()):
            return
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= keep_upto]
        p.write_text("".join(ln + "\n" for ln in kept))

    # ----------------------------------------------------------------- loop

    def _batches(self) -> Iterator[Any]:
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise RuntimeError(
                    f"data loader {type(self.loader).__name__} gave no batches on a new pass (exhausted or "
                    "empty); step-based training needs a loader that can be iterated again (epochs=None)"
                )

    def _grad_norm_fallback(self) -> float | None:
        """Stage 0 in fp32 keeps grads on the parameters; DeepSpeed reports no norm there."""
        sq = [p.grad.detach().float().pow(2).sum() for p in self.te.module.parameters() if p.grad is not None]
        return float(torch.stack(sq).sum().sqrt()) if sq else None

    def fit(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (or stop early after step ``stop_at``, checkpointed, as a
        preempted job would; the schedule still spans ``cfg.steps``). Exports only at the end."""
        cfg, te, engine = self.cfg, self.te, self.te.engine
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        self._write_run_config()
        resumed = load_checkpoint(te, self.out, self.loader) if resume else None
        step = resumed.step if resumed else 0
        self._trim_metrics(step)
        result = TrainResult(steps=step, resumed_from=resumed.step if resumed else None)
        if resumed and self.info.is_main:
            log.info("resumed from %s at step %d", resumed.tag, step)
        batches = self._batches()
        samples_per_step = cfg.batch_size * cfg.grad_accum * self.info.world_size
        bar = None
        if self.progress and self.info.is_main and step < end:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc=f"train[{cfg.name}]", dynamic_ncols=True)
        metrics_f = open(self.out / METRICS_FILE, "a") if self.info.is_main else None  # noqa: SIM115
        times: list[float] = []
        last_tag = None
        try:
            while step < end:
                t0 = time.perf_counter()
                lr = te.lr()
                sums: dict[str, float] = {}
                grad_norm = None
                engine.train()
                for micro in range(cfg.grad_accum):
                    batch = to_device(next(batches), te.device)
                    out = self.loss_fn(engine, batch)
                    loss, parts = out if isinstance(out, tuple) else (out, {})
                    if loss.ndim != 0:
                        raise ValueError(f"loss_fn must return a scalar loss, got shape {list(loss.shape)}")
                    engine.backward(loss)
                    if micro == cfg.grad_accum - 1 and cfg.zero_stage == 0 and te.precision == "fp32":
                        grad_norm = self._grad_norm_fallback()
                    engine.step()
                    for k, v in {"loss": loss, **parts}.items():
                        if v is not None:
                            sums[k] = sums.get(k, 0.0) + _scalar(v) / cfg.grad_accum
                if te.ema is not None:
                    te.ema.update()
                step += 1
                ds_norm = engine.get_global_grad_norm()
                grad_norm = float(ds_norm) if ds_norm is not None else grad_norm
                names = sorted(sums)
                means = dict(zip(names, dd.all_reduce_mean([sums[k] for k in names], te.device), strict=True))
                dt = time.perf_counter() - t0
                times.append(dt)
                rec = {
                    "step": step,
                    **means,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "step_s": dt,
                    "samples_per_s": samples_per_step / dt,
                }
                result.history.append(rec)
                if metrics_f is not None:
                    metrics_f.write(json.dumps(rec) + "\n")
                    metrics_f.flush()
                if bar is not None:
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        bar.set_postfix(
                            loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", gnorm=f"{grad_norm or 0:.3f}"
                        )
                elif self.info.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                    log.info(
                        "step %d loss %.5f lr %.3e grad_norm %s %.3fs/step",
                        step,
                        means["loss"],
                        lr,
                        grad_norm,
                        dt,
                    )
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == end:
                    last_tag = save_checkpoint(te, self.out, step, self.loader)
        finally:
            if bar is not None:
                bar.close()
            if metrics_f is not None:
                metrics_f.close()
        result.steps = step
        steady = times[1:] if len(times) > 1 else times
        result.mean_step_s = sum(steady) / len(steady) if steady else None
        if last_tag is None and resumed is not None:
            last_tag = self.out / "checkpoints" / resumed.tag
        if step < cfg.steps:
            return result
        result.final_dir = self.out / FINAL_DIRNAME
        export_weights(te, result.final_dir, tag_dir=last_tag, config=self._export_record())
        return result

    def _export_record(self) -> dict[str, Any]:
        return dict(self.config_record)
