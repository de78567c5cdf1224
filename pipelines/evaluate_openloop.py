"""Open-loop evaluation of a trained policy on curated shards (held-out episodes by default).

    python -m pipelines.evaluate_openloop --policy runs/policy/final --data shards/ --out reports/openloop
    python -m pipelines.evaluate_openloop --policy owner/gwp-policy --data owner/dataset --split all …

Top to bottom:

1. load the policy (``GWPPolicyModel.from_pretrained``: local folder or Hub model repo id);
2. open the dataset and choose the samples: ``--split heldout`` (default) keeps the episodes the
   fine-tuning run held out, read from the run record in the policy folder
   (``training.json`` → ``heldout.episodes``); ``--split all`` keeps every sample;
3. :func:`policy.openloop.evaluate_openloop` on an evenly spread subset of ``--max-samples``:
   action MSE per dim (normalised and robot units) and, unless ``--no-video``, joint sampling with
   predicted-video PSNR/SSIM against the real future frames;
4. write ``openloop.json``, ``openloop.md``, ``action_error.png`` and ``frames.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipelines.usage import ArgumentParser, UsageError, command, local_or_repo_id, reading

SPLITS = ("heldout", "all")


def heldout_of(policy_folder: Path) -> list[str]:
    """Held-out episode ids recorded by ``pipelines.finetune`` in ``<policy>/training.json``."""
    rec = policy_folder / "training.json"
    if not rec.is_file():
        raise FileNotFoundError(
            f"{rec}: no fine-tuning record, so the held-out episodes are unknown; use --split all"
        )
    episodes = (json.loads(rec.read_text()).get("heldout") or {}).get("episodes") or []
    if not episodes:
        raise ValueError(f"{rec}: the run held out no episodes (--heldout-fraction 0); use --split all")
    return list(episodes)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp evaluate-openloop", description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help="policy folder or Hub model repo id")
    p.add_argument("--revision", default=None, help="policy repo revision")
    p.add_argument("--data", required=True, help="curated shards folder or Hub dataset repo id")
    p.add_argument("--data-revision", default=None)
    p.add_argument("--split", choices=SPLITS, default="heldout")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the policy's, 10)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--no-video", action="store_true", help="action-only decoding, no PSNR/SSIM")
    p.add_argument("--pictures", type=int, default=4, help="samples shown in frames.png")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


@command("gwp evaluate-openloop")
def main(argv: list[str] | None = None) -> int:
    from policy.heldout import select_episodes
    from policy.model import GWPPolicyModel, resolve_model_folder
    from policy.openloop import OpenLoopConfig, evaluate_openloop, write_report
    from pretrain.data import ShardSet

    args = build_parser().parse_args(argv)
    local_or_repo_id("--policy", args.policy)
    local_or_repo_id("--data", args.data, bare_name_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    with reading("--policy", args.policy):
        folder = resolve_model_folder(args.policy, args.revision)
        model = GWPPolicyModel.from_pretrained(folder, device="cpu")
    with reading("--data", args.data):
        shards = ShardSet.open(args.data, args.data_revision)
    if args.split == "heldout":
        try:
            shards = select_episodes(shards, heldout_of(folder))
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        if shards.num_rows == 0:
            raise UsageError(f"none of the held-out episodes of {folder} is in {args.data}")
    cfg = OpenLoopConfig(
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        num_steps=args.steps or model.cfg.flow.num_steps,
        noise_seed=args.seed,
        video=not args.no_video,
        picture_samples=args.pictures,
    )
    metrics, pictures = evaluate_openloop(model, shards, cfg)
    metrics.update(policy=str(args.policy), data=str(args.data), split=args.split)
    out = write_report(args.out, metrics, pictures)
    video = metrics.get("video")
    print(
        f"open loop on {metrics['samples']} {args.split} samples: action MSE {metrics['action_mse']:.4f} "
        f"(normalised), {metrics['action_mse_robot']:.5f} (robot units)"
        + (f"; video PSNR {video['psnr']:.2f} dB, SSIM {video['ssim']:.3f}" if video else "")
        + f" → {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
