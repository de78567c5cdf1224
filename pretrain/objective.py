"""The pretraining objective: action-conditioned future-video generation (ARCHITECTURE.md, "The model").

Shape legend: B batch · P action chunk · 32 padded action/state dims · C, K, h, w latent video
(K future frames) · L text tokens · E stored text-state width · T the model's text width (``text_dim``).

One training example is a curated sample: the current frame, K future frames, the action chunk
that led there (normalised, padded to 32) and an instruction embedding. The transformer runs in
mode ``pretrain``:

* **C** — state token + the clean latent of the current frame (timestep 0);
* **A** — the *clean* action chunk as conditioning (timestep 0), or nothing;
* **V** — the noisy future latents (rectified flow, ``x_σ = (1 − σ)·x + σ·ε``, video shift).

Loss = ``λ_v · MSE(predicted velocity, ε − x)`` over the future latents only (there is no action
target in pretraining; :class:`~pretrain.flow.FlowConfig` supplies λ_v and the shift). Target and
loss are float32 whatever the model's dtype. With ``video_residual`` (the model preset's
``ModelConfig.video_residual``) x is the change of the future latents from the observation latent,
the video head predicts x itself (loss ``λ_v · MSE(x̂, x)``), and :func:`sample_future` turns that
into a velocity and adds the observation back.

**Padded action dims are zero everywhere** (the choice shared with the policy's joint loss,
``policy/model.py``): the clean actions of A are masked to the embodiment's valid dims here, the
policy puts no noise on padded dims, and its samplers keep them at 0, so ``action_in`` never
sees anything else there. GWP's published trainer instead takes the action loss over all 32
dims, padded ones learning to predict the noise; zeros cost no capacity and leave nothing
untrained to integrate.

**Which samples see their actions** (``actions_present_B``): a sample keeps them when it has any
(``action_mask.any()``: robot data) *and* survives an action dropout drawn with probability
``action_dropout``. Samples without actions — human video, whose ``action_mask`` is all False —
are always dropped, so one model learns from both kinds of data and also learns the
unconditioned video prior. A dropped sample's action tokens are hidden from V by the key mask,
which makes its video prediction exactly what it would be with no action tokens at all; the
tokens stay in the sequence, so every batch has the same shape whatever the mix.

**Latents** come from the batch when it carries them (a latent cache: ``obs_latents`` /
``future_latents``), otherwise from the frames (``obs_frames`` / ``future_frames`` in [-1, 1] or
uint8) through the codec, without gradients. The codec is a plain attribute of the objective:
its weights are never trained, checkpointed or exported; it moves to the device of the batch
(the model's) before encoding, so the latents land there too.

**Randomness** — dropout, σ and ε are drawn from the global torch RNG in a fixed order (or from
``generator`` when given), so the trainer's saved RNG state makes a resumed run repeat the
uninterrupted one exactly.

:func:`sample_future` is the matching sampler (Euler, 10 steps, video shift): predicted future
latents for a batch, with or without its actions — what the pretraining report decodes into PNGs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.codec import LatentCodec
from pretrain.flow import add_noise, euler_sample, flow_loss, sample_sigma, sigma_schedule, velocity_of_clean
from pretrain.model import ModelOutput
from pretrain.objective_config import ObjectiveConfig
from pretrain.pixels import tensor_to_unit_range


def text_states(batch: dict[str, Any], text_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(states [B, L, T], mask [B, L])``: the batch's ``text_states [B, L, E]`` zero-padded from E to
    the model's text width T (E = T for umT5-XXL on Wan; the CPU presets' hashed tokens are narrower)."""
    if "text_states" not in batch:
        raise ValueError("batch has no text_states (the dataset's instruction token states)")
    states_BLE = batch["text_states"].to(device, torch.float32)
    E = states_BLE.shape[-1]
    if text_dim < E:
        raise ValueError(f"text states have {E} dims, more than the model's text width {text_dim}")
    return F.pad(states_BLE, (0, text_dim - E)), batch["text_mask"].to(device, torch.bool)


class PretrainObjective:
    """The trainer's loss function: ``objective(engine, batch) -> (loss, parts)``."""

    def __init__(
        self, cfg: ObjectiveConfig, codec: LatentCodec, text_dim: int, *, video_residual: bool = False
    ) -> None:
        self.cfg = cfg
        self.codec = codec
        self.text_dim = text_dim
        self.video_residual = video_residual  # ModelConfig.video_residual: learn future − observation

    # ------------------------------------------------------------ batch → model inputs

    @torch.no_grad()
    def latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(obs [B, C, 1, h, w], future [B, C, K, h, w])`` from cached latents or frames."""
        if "obs_latents" in batch:
            return batch["obs_latents"].float(), batch["future_latents"].float()
        if "obs_frames" not in batch:
            raise ValueError(
                "pretraining batch has neither obs_latents nor obs_frames (load the shards with frames)"
            )
        obs_B3HW, fut_B3KHW = batch["obs_frames"], batch["future_frames"]
        if obs_B3HW.dtype == torch.uint8:
            obs_B3HW, fut_B3KHW = tensor_to_unit_range(obs_B3HW), tensor_to_unit_range(fut_B3KHW)
        self.codec.to(obs_B3HW.device)  # the trainer put the batch on the model's device: the codec follows
        lat_BCFhw = self.codec.encode(torch.cat([obs_B3HW[:, :, None], fut_B3KHW], dim=2).float()).float()
        return lat_BCFhw[:, :, :1], lat_BCFhw[:, :, 1:]

    def actions_present(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """[B] bool: the sample has actions and survives the dropout (one uniform draw per sample)."""
        mask_B32 = batch["action_mask"].bool()
        u_B = torch.rand(mask_B32.shape[0], generator=generator, device=mask_B32.device)
        return mask_B32.any(dim=1) & (u_B >= self.cfg.action_dropout)

    def conditioning(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The clean inputs of C and A: state, embodiment, masked actions, text."""
        act_BP32 = batch["action"].float() * batch["action_mask"].float()[:, None, :]
        state_B32 = None
        if self.cfg.use_state:
            state_B32 = batch["state"].float() * batch["state_mask"].float()
        text_BLT, text_mask_BL = text_states(batch, self.text_dim, act_BP32.device)
        return {
            "state_B32": state_B32,
            "embodiment_id_B": batch["embodiment_id"],
            "actions_BP32": act_BP32,
            "text_BLD": text_BLT,
            "text_mask_BL": text_mask_BL,
        }

    # ------------------------------------------------------------ loss

    def loss(
        self, forward: Any, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """λ_v · video flow loss of one batch; ``forward`` is the model or the DeepSpeed engine."""
        obs, fut = self.latents(batch)
        if self.video_residual:
            fut = fut - obs
        B, dev = fut.shape[0], fut.device
        present_B = self.actions_present(batch, generator)  # draw order: dropout, σ, ε
        sigma_B = sample_sigma(B, self.cfg.flow.video_shift, generator, dev)
        eps = torch.randn(fut.shape, generator=generator, device=dev, dtype=fut.dtype)
        out: ModelOutput = forward(
            obs,
            add_noise(fut, eps, sigma_B),
            sigma_video_B=sigma_B,
            mode="pretrain",
            actions_present_B=present_B,
            **self.conditioning(batch),
        )
        target = fut if self.video_residual else eps - fut  # the residual head predicts the clean target
        fl = flow_loss(self.cfg.flow, video_pred_BCKHW=out.video_velocity_BCKHW, video_target_BCKHW=target)
        return fl.total, {"video_loss": fl.video.detach(), "actions_kept": present_B.float().mean()}

    def __call__(self, engine: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(engine, batch)


@torch.no_grad()
def sample_future(
    model: nn.Module,
    objective: PretrainObjective,
    batch: dict[str, Any],
    *,
    with_actions: bool = True,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Predicted future latents [B, C, K, h, w] for a batch: Euler from noise, video shift.

    ``with_actions``: condition on the sample's actions where it has them (no dropout);
    False generates every sample unconditioned, as for human video.
    """
    obs, fut = objective.latents(batch)
    cond = objective.conditioning(batch)
    present_B = batch["action_mask"].bool().any(dim=1)
    if not with_actions:
        present_B = torch.zeros_like(present_B)
    fc = objective.cfg.flow
    sigmas = sigma_schedule(num_steps or fc.num_steps, fc.video_shift, device=fut.device)
    noise = torch.randn(fut.shape, generator=generator, device=fut.device, dtype=fut.dtype)

    def velocity(x: Tensor, sigma_B: Tensor) -> Tensor:
        out = model(obs, x, sigma_video_B=sigma_B, mode="pretrain", actions_present_B=present_B, **cond)
        v = out.video_velocity_BCKHW.float()
        return velocity_of_clean(x, v, sigma_B) if objective.video_residual else v

    target = euler_sample(velocity, noise, sigmas)
    return target + obs if objective.video_residual else target
