"""Fine-tune the GWP policy: joint action + video flow matching on curated shards (ARCHITECTURE.md, "The model").

Launch (same engine as pretraining: ZeRO, resume, EMA, safetensors export)::

    deepspeed --num_gpus N --module pipelines.finetune --preset small --init <pretrained dir|repo> \\
        --data <shards dir|dataset repo> --out runs/policy
    python -m pipelines.finetune --preset debug --init none --data shards/ --out runs/policy-debug

Top to bottom:

1. open the dataset (``pretrain.data.ShardSet``: local folder or Hub dataset repo at a revision);
   from its manifest take the window geometry (P, K), the composed image geometry, how the
   instructions were embedded (``config["caption"]`` None → hashed fallback) and the
   per-embodiment normalisation statistics; hold out ``--heldout-fraction`` of the episodes
   (by episode id, deterministic: ``policy.heldout``). Action-free samples (video without
   actions, all-False ``action_mask``) are left out first, with a count in the log and the run
   record: a policy learns actions, and those rows have none (pretraining is where they help);
   a dataset with no sample with actions is refused;
2. build the policy: the transformer from ``--init`` (our pretrained checkpoint, or a diffusers
   Wan2.2 transformer / pipeline folder, local or a model repo id — ``pretrain.init`` — whose
   backbone fills the ``--model`` preset, refused with any codec but ``wan-vae``; ``none`` =
   random init of the ``--model`` preset), with P and K of the data and the
   loss weights / timestep shifts of ``--action-weight`` ``--video-weight`` ``--action-shift``
   ``--video-shift`` (λ_a, λ_v, s_a, s_v; recorded in the policy config);
3. train with ``pretrain.trainer.Trainer`` on ``GWPPolicyModel.joint_loss`` (a resumed run
   continues from the newest complete checkpoint in ``--out``); every ``--eval-every`` steps the
   held-out action error (action-only, 10 steps, fixed noise) goes to ``<out>/heldout.jsonl``,
   and once more for the exported (EMA) weights at the end;
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
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.config import VideoConfig
from pipelines import train_cli
from pipelines.config_flags import name_flag
from pipelines.usage import ArgumentParser, command, local_or_repo_id, reading
from pretrain.config import MODEL_PRESETS, get_model_config
from pretrain.run_config import TRAIN_PRESETS
from pretrain.stream import read_shard_columns
from schemas import get_embodiment
from schemas.normalize import NormConfig

if TYPE_CHECKING:  # torch and the policy code load after the arguments are checked
    from policy.model import GWPPolicyModel, PolicyConfig
    from pretrain.data import ShardSet
    from pretrain.flow import FlowConfig

log = logging.getLogger("finetune")
TRAINING_RECORD = "training.json"


# ---- what the data decides ----------------------------------------------------------------------


def data_settings(shards: ShardSet) -> dict[str, Any]:
    """P, K, image geometry, text embedding and normalisation settings of a curated dataset."""
    from policy.model import ImageConfig, text_config_from_manifest

    cfg = shards.manifest.config or {}
    cur = cfg.get("curation") or {}
    first = read_shard_columns(  # local or streamed
        shards.shards[0], ["action", "frame_indices", "height", "width"]
    ).slice(0, 1)
    row = first.to_pylist()[0]
    chunk = np.asarray(row["action"], dtype=np.float32).reshape(-1, 32).shape[0]
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
        "text": text_config_from_manifest(shards.manifest.text, f"{shards.root}/meta/manifest.json"),
        "norm": NormConfig(**cur["norm"]) if "norm" in cur else NormConfig(),
        "embodiments": tuple(get_embodiment(name) for name in sorted(shards.manifest.stats)),
        "stats": dict(shards.manifest.stats),
    }


def rows_with_actions(shards: ShardSet) -> tuple[ShardSet, int]:
    """``(view of the rows that carry actions, number of action-free rows left out)``;
    ValueError naming the dataset when no row has actions."""
    keep, dropped = [], 0
    for i, path in enumerate(shards.shards):
        mask_N32 = np.asarray(read_shard_columns(path, ["action_mask"]).column(0).to_pylist(), dtype=bool)
        rows = np.arange(len(mask_N32)) if shards.selection is None else np.asarray(shards.selection[i])
        has_N = mask_N32.reshape(len(mask_N32), -1).any(axis=1)[rows] if len(rows) else np.zeros(0, bool)
        keep.append(np.flatnonzero(has_N).tolist())
        dropped += int((~has_N).sum())
    if dropped == shards.num_rows:
        raise ValueError(
            f"{shards.root}: all {dropped} samples are video without actions; a policy needs samples "
            "with actions (use such data for pretraining)"
        )
    return (shards.select(keep) if dropped else shards), dropped


def build_policy(
    init: str,
    revision: str | None,
    model_preset: str | None,
    settings: dict[str, Any],
    codec: str,
    codec_kwargs: dict,
    flow: FlowConfig | None = None,
) -> GWPPolicyModel:
    from policy.model import GWPPolicyModel, PolicyConfig
    from pretrain.flow import FlowConfig

    fields = {
        "flow": flow or FlowConfig(),
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
            init,
            revision,
            # Wan weights: the non-Wan fields and video geometry from --model (None: wan22-5b's);
            # our checkpoints carry their own config
            base=None if model_preset is None else get_model_config(model_preset),
            chunk=settings["chunk"],
            num_future=settings["num_future"],
            **fields,
        )
    model.norm_stats = settings["stats"]
    return model


def loss_fn(engine: Any, batch: dict[str, Any]) -> Any:
    """The trainer's loss: joint action + video flow loss, run through the DeepSpeed engine."""
    return engine.module.joint_loss(batch, forward=engine)


def loss_fn_with_check(check: Callable[[Any], None]) -> Callable[[Any, dict[str, Any]], Any]:
    """:func:`loss_fn` preceded by ``check(engine)`` (the held-out hook; it decides when to run)."""

    def fn(engine: Any, batch: dict[str, Any]) -> Any:
        check(engine)
        return loss_fn(engine, batch)

    return fn


def export_policy(final_dir: Path, policy_cfg: PolicyConfig, stats: dict, card: dict[str, Any]) -> Path:
    """Turn the trainer's export (weights + run record) into a ``save_pretrained`` policy folder."""
    from safetensors.torch import load_file

    from policy.model import GWPPolicyModel

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
    p = ArgumentParser(prog="gwp finetune", description=__doc__.splitlines()[0])
    name_flag(p, "--preset", TRAIN_PRESETS, default="debug", help="train config preset")
    p.add_argument(
        "--init",
        required=True,
        help="our checkpoint or a diffusers Wan2.2 transformer/pipeline (folder or model repo id); 'none' = random",
    )
    p.add_argument("--init-revision", default=None)
    name_flag(
        p,
        "--model",
        MODEL_PRESETS,
        help="model preset: the model of --init none; with Wan weights, the non-Wan fields and video geometry",
    )
    train_cli.add_data_args(p)
    train_cli.add_codec_args(p)
    train_cli.add_train_args(p, [n for n in train_cli.TRAIN_OVERRIDES if n != "warmup_steps"])
    train_cli.add_flow_args(p, train_cli.FLOW_OVERRIDES)
    p.add_argument(
        "--heldout-fraction", type=float, default=0.1, help="episodes held out from training (0 = none)"
    )
    p.add_argument("--heldout-seed", type=int, default=0, help="seed of the episode split")
    p.add_argument(
        "--eval-every", type=int, default=0, help="held-out action error every N steps (0 = only at the end)"
    )
    p.add_argument("--heldout-samples", type=int, default=64, help="held-out samples per check")
    train_cli.add_run_args(p)
    return p


@command("gwp finetune")
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[finetune %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    cfg = train_cli.checked_train_config("finetune", args, args.preset)
    if cfg is None:  # a bad preset or value: one line naming the field and the allowed values
        return 2
    train_cli.check_data_arg(args)
    if args.init.lower() != "none":
        local_or_repo_id("--init", args.init)
    kwargs = train_cli.codec_kwargs("finetune", args)  # a codec flag that does not fit, before torch loads
    flow = train_cli.flow_config(args)

    import torch

    from policy.heldout import HeldoutEvaluator, split_shards
    from policy.model import GWPPolicyModel
    from pretrain import distributed as dd
    from pretrain.stored_latents import check_stored_latents, describe
    from pretrain.trainer import Trainer  # imports DeepSpeed: only when training

    train_cli.apply_threads(args)
    shards = train_cli.open_shards(args)
    with reading("--data", args.data):  # a dataset the policy cannot be trained on (no text embedding, …)
        settings = data_settings(shards)
        shards, action_free = rows_with_actions(shards)
    if action_free:
        log.info("left out %d action-free samples (video without actions: no action to learn)", action_free)
    torch.manual_seed(cfg.seed)  # a random init (--init none) is part of the run: seed it like the rest
    with reading("--init", args.init):  # not a checkpoint, or one that does not fit the data
        model = build_policy(
            args.init,
            args.init_revision,
            # --init none builds --model (default: the train preset's name, e.g. debug); Wan weights
            # take their other fields from --model, else from a model preset of the train preset's
            # name; our checkpoints carry their own (train presets such as `demo` name no model)
            (args.model or args.preset)
            if args.init.lower() == "none"
            else args.model or (args.preset if args.preset in MODEL_PRESETS else None),
            settings,
            args.codec,
            kwargs,
            flow,
        )
    with reading("--data", args.data):  # stored latents of another codec or geometry: refused, named
        stored = check_stored_latents(shards, model.codec, model.cfg.model.video_geometry)
    if stored:  # the loader hands the stored latents to the model: the codec never runs in training
        log.info("training on the dataset's stored latents, %s", describe(shards.latents))
    split = split_shards(shards, args.heldout_fraction, args.heldout_seed)
    check = None
    if split.heldout is not None:
        check = HeldoutEvaluator(split.heldout, cfg.output_dir, max_samples=args.heldout_samples)
        log.info(
            "held out %d of %d episodes (%d of %d samples)",
            len(split.heldout_episodes),
            len(split.heldout_episodes) + split.train_episodes,
            split.heldout.num_rows,
            shards.num_rows,
        )
    loader = train_cli.shard_loader(split.train, cfg, args.num_workers)
    record = {
        "policy": model.cfg.to_dict(),
        "init": {"source": args.init, "revision": args.init_revision},
        "data": {
            "source": str(args.data),
            "revision": args.data_revision,
            "rows": shards.num_rows,
            "action_free_rows_left_out": action_free,
            "stream": train_cli.stream_record(args),
        },
        "heldout": split.record(args.heldout_fraction, args.heldout_seed),
    }
    if check is not None:
        record["heldout"]["check"] = {"eval_every": args.eval_every, **check.config_record()}
    fn = loss_fn
    if check is not None and args.eval_every > 0 and dd.is_main():
        fn = loss_fn_with_check(check.hook(args.eval_every, log.info))
    trainer = Trainer(model, fn, loader, cfg, config_record=record, progress=not args.no_progress)
    t_fit = time.perf_counter()
    result = trainer.fit(resume=not args.no_resume)
    fit_s = time.perf_counter() - t_fit
    if result.final_dir is not None and dd.is_main():
        card = {"description": "GigaWorld-Policy fine-tuned jointly on actions and future video."}
        if not Path(str(args.data)).exists():
            card.update(dataset_repo=str(args.data), dataset_revision=args.data_revision)
        folder = export_policy(result.final_dir, model.cfg, settings["stats"], card)
        if check is not None:
            final = GWPPolicyModel.from_pretrained(folder, device="cpu")
            rec = check.evaluate(final, result.steps, weights="final", train_s=fit_s)
            log.info(
                "held-out (final weights): action MSE %.4f (normalised), %.5f (robot units)",
                rec["action_mse"],
                rec["action_mse_robot"],
            )
        log.info(
            "policy saved to %s (steps %d, loss %s)",
            folder,
            result.steps,
            train_cli.loss_span(result.history),
        )
    dd.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
