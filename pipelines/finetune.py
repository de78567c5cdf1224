"""Fine-tune the GWP policy: joint action + video flow matching on curated shards (DESIGN.md §5–6).

Launch (same engine as pretraining: ZeRO, resume, EMA, safetensors export)::

    deepspeed --num_gpus N --module pipelines.finetune --preset small --init <pretrained dir|repo> \\
        --data <shards dir|dataset repo> --out runs/policy
    python -m pipelines.finetune --preset debug --init none --data shards/ --out runs/policy-debug

Top to bottom:

1. open the dataset (``pretrain.data.ShardSet``: local folder or Hub dataset repo at a revision);
   from its manifest take the window geometry (P, K), the composed image geometry, how the
   instructions were embedded (``config["caption"]`` None → hashed fallback) and the
   per-embodiment normalisation statistics;
2. build the policy: the transformer from ``--init`` (a pretrained checkpoint folder or model
   repo id; ``none`` = random init of the ``--model`` preset), with P and K of the data;
3. train with ``pretrain.trainer.Trainer`` on ``GWPPolicyModel.joint_loss`` (a resumed run
   continues from the newest complete checkpoint in ``--out``);
4. turn the trainer's export ``<out>/final`` (EMA weights + run record) into a policy folder
   (``save_pretrained``: weights, config with everything inference needs, ``norm_stats.json``,
   model card); the run record moves to ``<out>/final/training.json``.
   ``Policy.from_pretrained("<out>/final")`` loads it; ``pipelines.publish`` pushes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors.torch import load_file

from curation.config import NormConfig, VideoConfig
from policy.model import GWPPolicyModel, ImageConfig, PolicyConfig, TextConfig
from pretrain import distributed as dd
from pretrain.config import get_model_config, list_model_configs
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.flow import FlowConfig
from pretrain.run_config import TrainConfig, get_train_config, train_config_names
from schemas import get_embodiment

log = logging.getLogger("finetune")
TRAINING_RECORD = "training.json"


# ---- what the data decides ----------------------------------------------------------------------


def data_settings(shards: ShardSet) -> dict[str, Any]:
    """P, K, image geometry, text embedding and normalisation settings of a curated dataset."""
    cfg = shards.manifest.config or {}
    cur = cfg.get("curation") or {}
    first = pq.read_table(
        shards.shards[0], columns=["action", "frame_indices", "height", "width", "text_embedding"]
    ).slice(0, 1)
    row = first.to_pylist()[0]
    chunk = np.asarray(row["action"], dtype=np.float32).reshape(-1, 32).shape[0]
    emb = row["text_embedding"]
    if emb is None:
        raise ValueError(
            f"{shards.shards[0]}: samples carry no text_embedding; curate with captioning or the hashed "
            "fallback embedding (the default) so the policy can embed instructions the same way"
        )
    video = cur.get("video") or {}
    image = ImageConfig(
        width=int(video.get("width", row["width"])),
        height=int(video.get("height", row["height"])),
        fit=video.get("fit", VideoConfig().fit),
    )
    if (image.width, image.height) != (row["width"], row["height"]):
        raise ValueError(
            f"{shards.shards[0]}: frames are {row['width']}×{row['height']}, the manifest's video config says "
            f"{image.width}×{image.height}"
        )
    return {
        "chunk": chunk,
        "num_future": len(row["frame_indices"]) - 1,
        "image": image,
        "text": TextConfig.from_manifest(cfg.get("caption"), dim=len(emb)),
        "norm": NormConfig(**cur["norm"]) if "norm" in cur else NormConfig(),
        "embodiments": tuple(get_embodiment(name) for name in sorted(shards.manifest.stats)),
        "stats": dict(shards.manifest.stats),
    }


def build_policy(
    init: str,
    revision: str | None,
    model_preset: str,
    settings: dict[str, Any],
    codec: str,
    codec_kwargs: dict,
) -> GWPPolicyModel:
    fields = {
        "flow": FlowConfig(),
        "codec": codec,
        "codec_kwargs": codec_kwargs,
        "image": settings["image"],
        "text": settings["text"],
        "embodiments": settings["embodiments"],
        "norm": settings["norm"],
    }
    if init.lower() == "none":
        mcfg = replace(
            get_model_config(model_preset), chunk=settings["chunk"], num_future=settings["num_future"]
        )
        model = GWPPolicyModel(PolicyConfig(model=mcfg, **fields))
    else:
        model = GWPPolicyModel.from_backbone(
            init, revision, chunk=settings["chunk"], num_future=settings["num_future"], **fields
        )
    model.norm_stats = settings["stats"]
    return model


def loss_fn(engine: Any, batch: dict[str, Any]) -> Any:
    """The trainer's loss: joint action + video flow loss, run through the DeepSpeed engine."""
    return engine.module.joint_loss(batch, forward=engine)


def export_policy(final_dir: Path, policy_cfg: PolicyConfig, stats: dict, card: dict[str, Any]) -> Path:
    """Turn the trainer's export (weights + run record) into a ``save_pretrained`` policy folder."""
    weights = final_dir / "model.safetensors"
    model = GWPPolicyModel(policy_cfg)
    sd = load_file(str(weights))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: does not fit the policy: missing {missing}, unexpected {unexpected}")
    model.norm_stats = stats
    record = final_dir / "config.json"
    train_record = json.loads(record.read_text()) if record.is_file() else {}
    (final_dir / TRAINING_RECORD).write_text(json.dumps(train_record, indent=2, sort_keys=True, default=str))
    return model.save_pretrained(final_dir, card_data={**card, "train_config": train_record.get("train", {})})


# ---- CLI ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset", default="debug", help=f"train config preset ({', '.join(train_config_names())})"
    )
    p.add_argument(
        "--init", required=True, help="pretrained checkpoint folder or model repo id; 'none' = random"
    )
    p.add_argument("--init-revision", default=None)
    p.add_argument(
        "--model", default=None, help=f"model preset for --init none ({', '.join(list_model_configs())})"
    )
    p.add_argument("--data", required=True, help="curated shards folder or dataset repo id")
    p.add_argument("--data-revision", default=None)
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, final/)")
    p.add_argument("--codec", default="pixel", choices=["pixel", "wan-vae"])
    p.add_argument("--codec-patch", type=int, default=4, help="pixel codec patch size")
    p.add_argument("--vae", default=None, help="wan-vae codec: local folder or repo id of the VAE")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--zero-stage", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def train_config(args: argparse.Namespace) -> TrainConfig:
    over = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "zero_stage": args.zero_stage,
        "ema_decay": args.ema_decay,
        "ckpt_every": args.ckpt_every,
        "seed": args.seed,
    }
    base = get_train_config(args.preset)
    cfg = replace(base, output_dir=str(args.out), **{k: v for k, v in over.items() if v is not None})
    if cfg.warmup_steps > cfg.steps:
        cfg = replace(cfg, warmup_steps=cfg.steps)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from pretrain.trainer import Trainer  # imports DeepSpeed: only when training

    logging.basicConfig(level=logging.INFO, format="[finetune %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    cfg = train_config(args)
    shards = ShardSet.open(args.data, args.data_revision)
    settings = data_settings(shards)
    codec_kwargs: dict[str, Any] = {"patch": args.codec_patch} if args.codec == "pixel" else {}
    if args.codec == "wan-vae":
        if not args.vae:
            raise SystemExit("finetune: --codec wan-vae needs --vae <folder or repo id>")
        codec_kwargs = {"path_or_repo": args.vae}
    model = build_policy(
        args.init, args.init_revision, args.model or args.preset, settings, args.codec, codec_kwargs
    )
    loader = ShardLoader(
        shards,
        LoaderConfig(batch_size=cfg.batch_size, seed=cfg.seed, num_workers=args.num_workers),
        rank=dd.env_rank(),
        world_size=dd.env_world_size(),
    )
    record = {
        "policy": model.cfg.to_dict(),
        "init": {"source": args.init, "revision": args.init_revision},
        "data": {"source": str(args.data), "revision": args.data_revision, "rows": shards.num_rows},
    }
    trainer = Trainer(model, loss_fn, loader, cfg, config_record=record, progress=not args.no_progress)
    result = trainer.fit(resume=not args.no_resume)
    if result.final_dir is not None and dd.is_main():
        card = {"description": "GigaWorld-Policy fine-tuned jointly on actions and future video."}
        if not Path(str(args.data)).exists():
            card.update(dataset_repo=str(args.data), dataset_revision=args.data_revision)
        folder = export_policy(result.final_dir, model.cfg, settings["stats"], card)
        losses = [h["loss"] for h in result.history]
        log.info(
            "policy saved to %s (steps %d, loss %s → %s)",
            folder,
            result.steps,
            f"{losses[0]:.4f}" if losses else "-",
            f"{float(np.mean(losses[-3:])):.4f}" if losses else "-",
        )
    dd.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
