"""Open-loop evaluation on held-out shards: action error per dim, predicted-video PSNR/SSIM, pictures.

Shape legend: B batch · P action chunk · 32 padded dims · Da robot action dims · K future frames ·
H, W composed image · C, h, w latent video.

Design (ARCHITECTURE.md, "Evaluation"):

* **Same inputs as deployment, from the shards.** A curated sample already holds what the policy
  sees (the composed observation frame, the normalised state, the instruction embedding) and what
  it should answer (the normalised action chunk and the real future frames), so no simulator is
  needed: :func:`predict_batch` builds the model-space context from a loader batch exactly as
  ``GWPPolicyModel.joint_loss`` does and samples with the deployment samplers
  (:mod:`policy.inference`, 10 Euler steps, no guidance).
* **Fixed noise.** Sample ``i`` of an evaluation always gets the same initial noise (drawn from a
  generator seeded with ``noise_seed``, never the global RNG), so two checkpoints are compared on
  identical draws and an evaluation during training does not perturb the training RNG.
* **Action error** per valid dim, as mean squared error in normalised units (what the loss sees)
  and in robot units. Robot units: both chunks are de-normalised with the *same* state
  (``denormalize_action`` with a zero state), so for delta dims the state cancels and the
  difference is exactly the robot-unit error.
* **Video** (joint sampling only): the K predicted future latents are decoded by the policy's codec
  and compared with the real future frames in [0, 1]: PSNR and SSIM (Gaussian window 11, σ 1.5,
  per channel, averaged) per future frame. The trivial "nothing moves" prediction (the observation
  frame repeated) is scored too, so a number can be read against what no model at all achieves.
* **Report**: ``openloop.json`` (all numbers), ``openloop.md`` (tables, and whether the prediction
  beats the repeated observation by both PSNR and SSIM), ``frames.png`` (rows of samples:
  observation, which is also the repeat baseline | real future 1..K | predicted future 1..K) and
  ``action_error.png`` (per-dim RMSE bars in robot units, one panel per embodiment).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from policy.inference import Context, sample_actions, sample_joint
from policy.model import GWPPolicyModel
from pretrain.data import LoaderConfig, ShardLoader, ShardSet
from pretrain.pixels import tensor_to_unit_range
from schemas.normalize import denormalize_action

REPORT_JSON = "openloop.json"
REPORT_MD = "openloop.md"
FRAMES_PNG = "frames.png"
ACTION_PNG = "action_error.png"


# ---- one batch ---------------------------------------------------------------------------------


def batch_context(model: GWPPolicyModel, batch: Mapping[str, Any]) -> Context:
    """The model-space context of a loader batch (what ``joint_loss`` feeds group C)."""
    if "obs_latents" in batch:
        obs = batch["obs_latents"].to(model.transformer.dtype)
    else:
        frames = batch["obs_frames"]
        if frames.dtype == torch.uint8:
            frames = tensor_to_unit_range(frames)
        obs = model.encode_frames(frames[:, :, None])
    text_BLT, text_mask_BL = model.batch_text(dict(batch), obs.device)
    return Context(
        obs_latent_BC1hw=obs,
        state_B32=(batch["state"].float() * batch["state_mask"].float()).to(model.transformer.dtype),
        embodiment_id_B=batch["embodiment_id"],
        text_BLD=text_BLT,
        text_mask_BL=text_mask_BL,
        action_mask_B32=batch["action_mask"].bool() if "action_mask" in batch else None,
    )


@torch.no_grad()
def predict_batch(
    model: GWPPolicyModel,
    batch: Mapping[str, Any],
    action_noise_BP32: Tensor,
    video_noise_BCKhw: Tensor | None = None,
    *,
    num_steps: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(normalised actions [B, P, 32], decoded frames [B, 3, K, H, W] in [-1, 1] or None)``.

    Action-only decoding (cached context) unless ``video_noise_BCKhw`` is given, then joint.
    """
    ctx = batch_context(model, batch)
    fc = model.cfg.flow
    steps = num_steps or fc.num_steps
    if video_noise_BCKhw is None:
        a = sample_actions(
            model.transformer,
            ctx,
            num_steps=steps,
            shift=fc.action_shift,
            action_noise_BP32=action_noise_BP32,
        )
        return a, None
    a, v = sample_joint(
        model.transformer,
        ctx,
        num_future=video_noise_BCKhw.shape[2],
        num_steps=steps,
        action_shift=fc.action_shift,
        video_shift=fc.video_shift,
        action_noise_BP32=action_noise_BP32,
        video_noise_BCKhw=video_noise_BCKhw,
    )
    fut = model.cfg.model.video_future(ctx.obs_latent_BC1hw, v)  # residual: observation added back
    return a, model.decode_future(ctx.obs_latent_BC1hw, fut).clamp(-1, 1)


# ---- metrics -----------------------------------------------------------------------------------


def psnr(pred_N3HW: Tensor, real_N3HW: Tensor) -> Tensor:
    """[N] PSNR in dB of images in [0, 1] (capped at 100 dB for identical images)."""
    mse = ((pred_N3HW.float() - real_N3HW.float()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp_max(100.0)


def ssim(pred_N3HW: Tensor, real_N3HW: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """[N] structural similarity of images in [0, 1]: Gaussian-weighted local statistics per channel
    (window clipped to the image), valid region only, averaged over pixels and channels.

    In float64: the variances are differences of nearly equal moments (E[x²] − μ²), which float32
    rounds by about 1e-4 of SSIM on flat regions, where c2 is all that is left of the denominator."""
    x, y = pred_N3HW.double(), real_N3HW.double()
    _, c, h, w = x.shape
    win = min(window, h, w)
    g = torch.exp(-((torch.arange(win, dtype=torch.float64) - (win - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, win, win).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, k, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


class ActionErrors:
    """Accumulates squared action errors per embodiment and dim (normalised and robot units)."""

    def __init__(self, model: GWPPolicyModel):
        self.model = model
        self.sums: dict[str, dict[str, np.ndarray]] = {}
        self.counts: dict[str, int] = {}

    def add(self, pred_BP32: Tensor, true_BP32: Tensor, embodiment_id_B: Tensor) -> None:
        pred, true = pred_BP32.float().cpu().numpy(), true_BP32.float().cpu().numpy()
        ids = embodiment_id_B.cpu().numpy()
        for spec in self.model.cfg.embodiments:
            rows = np.flatnonzero(ids == spec.id)
            if rows.size == 0:
                continue
            stats, norm, da = self.model.norm_stats[spec.name], self.model.cfg.norm, spec.action_dim
            zero = np.zeros((rows.size, spec.state_dim))
            robot = denormalize_action(pred[rows], zero, spec, stats, norm) - denormalize_action(
                true[rows], zero, spec, stats, norm
            )  # [b, P, Da]
            d = self.sums.setdefault(
                spec.name, {"sq": np.zeros(da), "sq_robot": np.zeros(da), "abs_robot": np.zeros(da)}
            )
            d["sq"] += ((pred[rows, :, :da] - true[rows, :, :da]) ** 2).sum((0, 1))
            d["sq_robot"] += (robot.astype(np.float64) ** 2).sum((0, 1))
            d["abs_robot"] += np.abs(robot.astype(np.float64)).sum((0, 1))
            self.counts[spec.name] = self.counts.get(spec.name, 0) + rows.size * pred.shape[1]

    def summary(self) -> dict[str, Any]:
        """Overall MSE (normalised and robot units, over every valid dim) and per-embodiment per dim."""
        per: dict[str, Any] = {}
        tot = tot_r = 0.0
        n_tot = 0
        for name, d in self.sums.items():
            n = self.counts[name]
            spec = self.model.cfg.embodiment(name)
            per[name] = {
                "dims": list(spec.action_names),
                "mse": (d["sq"] / n).tolist(),
                "mse_robot": (d["sq_robot"] / n).tolist(),
                "mae_robot": (d["abs_robot"] / n).tolist(),
                "action_steps": n,
            }
            tot, tot_r, n_tot = tot + d["sq"].sum(), tot_r + d["sq_robot"].sum(), n_tot + n * spec.action_dim
        if n_tot == 0:
            raise ValueError("no samples were evaluated")
        return {"action_mse": tot / n_tot, "action_mse_robot": tot_r / n_tot, "per_embodiment": per}


# ---- which samples -----------------------------------------------------------------------------


def spread_subset(shards: ShardSet, max_samples: int) -> ShardSet:
    """At most ``max_samples`` rows spread evenly over the whole set (not just its first episodes)."""
    n = shards.num_rows
    if n == 0:
        raise ValueError(f"{shards.root}: no rows to evaluate")
    take = np.unique(np.linspace(0, n - 1, min(max_samples, n)).round().astype(np.int64))
    bounds = np.cumsum((0, *shards.rows))
    keep = [take[(take >= bounds[i]) & (take < bounds[i + 1])] - bounds[i] for i in range(len(shards.rows))]
    return shards.select(keep)


def iter_batches(shards: ShardSet, batch_size: int) -> Iterable[dict[str, Any]]:
    """Every row once, in order (no shuffle, last batch partial)."""
    cfg = LoaderConfig(batch_size=batch_size, shuffle=False, drop_last=False)
    return ShardLoader(shards, cfg, epochs=1)


def fixed_noise(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """[n, *shape] standard normal noise from its own generator (sample i always gets row i)."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


# ---- the evaluation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenLoopConfig:
    max_samples: int = 64
    batch_size: int = 16
    num_steps: int = 10
    noise_seed: int = 0
    video: bool = True  # joint sampling + PSNR/SSIM; False = action-only
    picture_samples: int = 4  # rows in frames.png

    def __post_init__(self) -> None:
        for f in ("max_samples", "batch_size", "num_steps"):
            if getattr(self, f) < 1:
                raise ValueError(f"OpenLoopConfig: {f} must be ≥ 1, got {getattr(self, f)}")


@torch.no_grad()
def evaluate_openloop(
    model: GWPPolicyModel, shards: ShardSet, cfg: OpenLoopConfig = OpenLoopConfig()
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(metrics, pictures)`` of the model on (a spread subset of) ``shards``.

    ``pictures``: ``obs [n, H, W, 3]``, ``real`` and ``pred [n, K, H, W, 3]`` uint8 of the first
    ``picture_samples`` samples (empty arrays without video).
    """
    was_training = model.training
    model.eval()
    mc = model.cfg.model
    dev = next(model.parameters()).device
    subset = spread_subset(shards, cfg.max_samples)
    n = subset.num_rows
    a_noise = fixed_noise(n, (mc.chunk, mc.action_dim), cfg.noise_seed)
    errors = ActionErrors(model)
    v_noise: Tensor | None = None
    psnr_NK: list[Tensor] = []
    ssim_NK: list[Tensor] = []
    psnr_copy: list[Tensor] = []
    ssim_copy: list[Tensor] = []
    pics: dict[str, list[np.ndarray]] = {"obs": [], "real": [], "pred": []}
    i = 0
    try:
        for batch in iter_batches(subset, cfg.batch_size):
            batch = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in batch.items()}
            B = batch["action"].shape[0]
            vn = None
            if cfg.video:
                if v_noise is None:
                    _, fut = model.batch_latents(batch)
                    v_noise = fixed_noise(n, tuple(fut.shape[1:]), cfg.noise_seed + 1)
                vn = v_noise[i : i + B].to(dev)
            pred_a, frames = predict_batch(
                model, batch, a_noise[i : i + B].to(dev), vn, num_steps=cfg.num_steps
            )
            errors.add(pred_a, batch["action"], batch["embodiment_id"])
            if frames is not None:
                real = (batch["future_frames"].float() + 1) / 2  # [B, 3, K, H, W] in [0, 1]
                pred = (frames + 1) / 2
                obs = ((batch["obs_frames"].float() + 1) / 2)[:, :, None].expand_as(real)
                K = real.shape[2]

                def per_frame(fn: Any, a: Tensor, b: Tensor, K: int = K, B: int = B) -> Tensor:
                    flat = [
                        t.permute(0, 2, 1, 3, 4).reshape(B * K, *t.shape[1:2], *t.shape[3:]) for t in (a, b)
                    ]
                    return fn(*flat).reshape(B, K)

                psnr_NK.append(per_frame(psnr, pred, real))
                ssim_NK.append(per_frame(ssim, pred, real))
                psnr_copy.append(per_frame(psnr, obs, real))
                ssim_copy.append(per_frame(ssim, obs, real))
                want = cfg.picture_samples - len(pics["obs"])
                if want > 0:

                    def u8(t: Tensor) -> np.ndarray:
                        return (t.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

                    pics["obs"].extend(u8(obs[:want, :, 0].permute(0, 2, 3, 1)))
                    pics["real"].extend(u8(real[:want].permute(0, 2, 3, 4, 1)))
                    pics["pred"].extend(u8(pred[:want].permute(0, 2, 3, 4, 1)))
            i += B
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = {"samples": n, "num_steps": cfg.num_steps, "noise_seed": cfg.noise_seed}
    metrics.update(errors.summary())
    if psnr_NK:
        p, s = torch.cat(psnr_NK), torch.cat(ssim_NK)
        pc, sc = torch.cat(psnr_copy), torch.cat(ssim_copy)
        metrics["video"] = {
            "psnr": float(p.mean()),
            "ssim": float(s.mean()),
            "psnr_per_frame": p.mean(0).tolist(),
            "ssim_per_frame": s.mean(0).tolist(),
            "copy_baseline": {
                "psnr": float(pc.mean()),
                "ssim": float(sc.mean()),
                "psnr_per_frame": pc.mean(0).tolist(),
                "ssim_per_frame": sc.mean(0).tolist(),
            },
        }
    pictures = {k: np.stack(v) if v else np.zeros((0,), np.uint8) for k, v in pics.items()}
    return metrics, pictures


# ---- report ------------------------------------------------------------------------------------


def _frames_png(path: Path, pictures: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs, real, pred = pictures["obs"], pictures["real"], pictures["pred"]
    n, K = real.shape[:2]
    fig, axes = plt.subplots(n, 1 + 2 * K, figsize=(1.3 * (1 + 2 * K), 1.4 * n), squeeze=False)
    for r in range(n):
        row = [("observation (= repeat)", obs[r])] + [(f"real t+{k + 1}", real[r, k]) for k in range(K)]
        row += [(f"predicted t+{k + 1}", pred[r, k]) for k in range(K)]
        for c, (title, img) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _action_png(path: Path, metrics: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = metrics["per_embodiment"]
    fig, axes = plt.subplots(1, len(per), figsize=(3.2 * len(per) + 1, 3), squeeze=False)
    for ax, (name, d) in zip(axes[0], per.items(), strict=True):
        rmse = np.sqrt(d["mse_robot"])
        ax.bar(range(len(rmse)), rmse, color="tab:blue")
        ax.set_xticks(range(len(rmse)), d["dims"], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("RMSE (robot units)")
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(metrics: dict[str, Any], title: str = "Open-loop evaluation") -> str:
    lines = [
        f"# {title}",
        "",
        f"{metrics['samples']} held-out samples, {metrics['num_steps']} Euler steps, fixed noise "
        f"(seed {metrics['noise_seed']}).",
        "",
        f"Action MSE over valid dims: **{metrics['action_mse']:.4f}** (normalised), "
        f"**{metrics['action_mse_robot']:.5f}** (robot units).",
        "",
    ]
    for name, d in metrics["per_embodiment"].items():
        lines += [f"## {name}", "", "| dim | MSE (norm.) | MSE (robot) | MAE (robot) |", "|---|---|---|---|"]
        for j, dim in enumerate(d["dims"]):
            lines.append(f"| {dim} | {d['mse'][j]:.4f} | {d['mse_robot'][j]:.5f} | {d['mae_robot'][j]:.4f} |")
        lines.append("")
    v = metrics.get("video")
    if v:
        lines += [
            "## Predicted video",
            "",
            "| | PSNR (dB) | SSIM |",
            "|---|---|---|",
            f"| predicted | {v['psnr']:.2f} | {v['ssim']:.3f} |",
            f"| observation repeated (baseline) | {v['copy_baseline']['psnr']:.2f} | "
            f"{v['copy_baseline']['ssim']:.3f} |",
        ]
        for k, (p, s) in enumerate(zip(v["psnr_per_frame"], v["ssim_per_frame"], strict=True)):
            lines.append(f"| predicted t+{k + 1} | {p:.2f} | {s:.3f} |")
        base = v["copy_baseline"]
        for k, (p, s) in enumerate(
            zip(base.get("psnr_per_frame", []), base.get("ssim_per_frame", []), strict=True)
        ):
            lines.append(f"| repeated t+{k + 1} | {p:.2f} | {s:.3f} |")
        dp, ds = v["psnr"] - base["psnr"], v["ssim"] - base["ssim"]
        verdict = "above" if dp > 0 and ds > 0 else "not above"
        lines += [
            "",
            f"The predicted frames are **{verdict}** the repeated observation "
            f"(PSNR {dp:+.2f} dB, SSIM {ds:+.3f}).",
        ]
        lines += ["", f"![predicted vs real frames]({FRAMES_PNG})", ""]
    lines += [f"![action error per dim]({ACTION_PNG})", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: dict[str, Any], pictures: dict[str, np.ndarray]) -> Path:
    """``openloop.json``, ``openloop.md``, ``action_error.png`` and (with video) ``frames.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / REPORT_MD).write_text(render_markdown(metrics))
    _action_png(out / ACTION_PNG, metrics)
    if pictures["real"].ndim == 5 and len(pictures["real"]):
        _frames_png(out / FRAMES_PNG, pictures)
    return out
