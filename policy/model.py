"""The GWP policy model: the action-centred transformer + a latent codec + the flow objective.

Shape legend: B batch · P action chunk · 32 padded action/state dims · C, K, H, W latent video ·
h, w latent grid · L text tokens · E stored text-state width · T model text width (``model.text_dim``).

Design (ARCHITECTURE.md, "Objective and sampling"):

* **One transformer, two heads used.** :class:`GWPPolicyModel` holds the
  :class:`~pretrain.model.ActionVideoTransformer` (``self.transformer``) and trains it in mode
  ``joint``: noisy actions (group A) and noisy future latents (group V) after the clean context
  (C = state token + observation latent). The block-causal mask inside the transformer keeps V
  out of A, so action-only decoding at deployment sees exactly what training saw.
* **Loss** (:meth:`GWPPolicyModel.joint_loss`): rectified flow with separate timestep shifts
  (actions 5, video 2) and ``λ_a·MSE(actions over the embodiment's valid dims) + λ_v·MSE(future
  latents)``, λ_a = 5, λ_v = 1 (:class:`~pretrain.flow.FlowConfig`). Noise comes from the global
  torch RNG unless a generator is given, so the trainer's saved RNG state makes resume exact.
  The action MSE is a mean per sample over its valid dims, then over samples: a 4-dim robot
  weighs as much as a 14-dim one. Targets are formed in float32 whatever the model's dtype.
* **Padded action dims are zero everywhere.** An embodiment uses the first Da of the 32 dims;
  the rest carry no signal. GWP's published trainer instead takes the action loss over all
  dims (padded dims learn to predict the noise); here the noise on padded dims is masked out,
  so ``action_in`` sees exact zeros there at every σ, the loss covers the valid dims only, and
  the samplers (:mod:`policy.inference`) start from masked noise and mask the velocity, so
  inference feeds ``action_in`` the same zeros and returns zeros on padded dims. No capacity
  goes to predicting noise, and nothing untrained is integrated.
* **Latents.** Frames from the shard loader (``obs_frames``/``future_frames`` in [-1, 1]) are
  encoded here by the codec (no gradients); batches that already carry ``obs_latents``/
  ``future_latents`` (a latent cache) skip the codec. The codec is built for the model config's
  video geometry (``pretrain.codec.make_model_codec``: one clip through the VAE, or frame by
  frame) and is a plain attribute, not a submodule: its weights (a frozen VAE) are never
  trained, checkpointed or exported — but it follows the model's device (``.to()`` moves it),
  and latents come back on the model's device.
  With the model config's ``video_residual`` the video head predicts the clean future − observation
  latents (``ModelConfig.video_target``; loss: their MSE), the samplers turn that into a velocity,
  and their callers add the observation back (``video_future``) before decoding.
* **Text.** An instruction is a sequence of token states with a mask (``text_states [B, L, E]``,
  ``text_mask [B, L]``, stored once per instruction beside the shards); cross-attention attends
  over its tokens. E is zero-padded to the model's text width T (a zero-padded input to a linear
  layer is a smaller linear layer: the CPU presets' 64-d hashed tokens feed a 512-wide text
  embedder; umT5-XXL's 4096-d states enter Wan's embedder unchanged).
* **Initialisation** (:meth:`GWPPolicyModel.from_backbone`): the transformer's weights from a
  local folder or a Hub model repo id of one of two kinds (``pretrain.init.resolve_init``):
  our checkpoint (:func:`load_backbone`) — ``model.safetensors`` and a ``config.json`` that
  contains a ``ModelConfig`` anywhere inside (the trainer's export and
  ``HubMixin.save_pretrained`` folders both qualify); weight names may carry a prefix
  (``transformer.``, ``module.``…), found from ``video_in.weight`` and stripped — or a diffusers
  Wan transformer (a Wan2.2 folder, pipeline or repo), whose backbone geometry replaces the
  given base preset's and whose weights map through ``pretrain.wan_adapter``; Wan weights with
  a codec other than the Wan VAE are refused. The action chunk P and the number of future
  frames K come from the fine-tuning data: no parameter depends on them, so they are replaced
  in the backbone's config.
* **Everything inference needs travels in** :class:`PolicyConfig`: the composed image geometry
  of the dataset (curation's ``VideoConfig`` width/height/fit), how the dataset embedded
  instructions (the text encoder's identity), the embodiment specs (delta/absolute
  dims) and the normalisation settings; the statistics go to ``norm_stats.json`` via
  :class:`~pretrain.hub.HubMixin`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from pretrain.codec import LatentCodec, make_model_codec
from pretrain.config import ModelConfig
from pretrain.flow import FlowConfig, FlowLoss, add_noise, flow_loss, sample_sigma, velocity_target
from pretrain.hub import HubMixin, local_model_folder, read_json_object
from pretrain.init import check_init_codec, resolve_init
from pretrain.model import ModelOutput, model_class
from pretrain.objective import text_states
from pretrain.pixels import tensor_to_unit_range
from schemas import EmbodimentSpec
from schemas.compose import FIT_MODES
from schemas.config import from_dict
from schemas.hub.client import download_snapshot
from schemas.normalize import NormConfig
from schemas.text import TextEncoderConfig

BACKBONE_FILES = ("model.safetensors", "config.json")
_ANCHOR = "video_in.weight"  # a parameter every ActionVideoTransformer has, to find the name prefix


@dataclass(frozen=True)
class ImageConfig:
    """The composed observation image of the dataset (curation ``VideoConfig``): width × height, fit."""

    width: int = 64
    height: int = 64
    fit: str = "stretch"

    def __post_init__(self) -> None:
        if self.width < 4 or self.height < 4 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"ImageConfig: width/height must be even and ≥ 4, got {self.width}×{self.height}"
            )
        if self.fit not in FIT_MODES:
            raise ValueError(f"ImageConfig: fit must be one of {list(FIT_MODES)}, got {self.fit!r}")


# how the dataset embedded instructions; inference embeds them with the same encoder
TextConfig = TextEncoderConfig


def text_config_from_manifest(index: dict[str, Any] | None, where: str) -> TextConfig:
    """The encoder a dataset's manifest ``text`` entry names (``dim``: the stored width E)."""
    if not index:
        raise ValueError(
            f"{where}: no instruction token states (manifest 'text'); curate again with this version"
        )
    e = index["encoder"]
    return TextConfig(
        kind=e["kind"],
        name=e["name"],
        subfolder=e["subfolder"],
        dim=int(index["dim"]),
        max_tokens=e["max_tokens"],
    )


@dataclass(frozen=True)
class PolicyConfig:
    model: ModelConfig
    flow: FlowConfig = field(default_factory=FlowConfig)
    codec: str = "pixel"
    codec_kwargs: dict[str, Any] = field(default_factory=lambda: {"patch": 4})
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embodiments: tuple[EmbodimentSpec, ...] = ()
    norm: NormConfig = field(default_factory=NormConfig)

    def __post_init__(self) -> None:
        if self.text.dim > self.model.text_dim:
            raise ValueError(
                f"PolicyConfig: the dataset's text embeddings have {self.text.dim} dims, more than the "
                f"model's text width {self.model.text_dim}"
            )
        ids = [s.id for s in self.embodiments]
        if len(set(ids)) != len(ids) or len({s.name for s in self.embodiments}) != len(ids):
            raise ValueError(f"PolicyConfig: duplicate embodiment names or ids in {ids}")
        for s in self.embodiments:
            if s.id >= self.model.max_embodiments:
                raise ValueError(
                    f"PolicyConfig: embodiment {s.name!r} has id {s.id}, the model has "
                    f"{self.model.max_embodiments} embodiment slots"
                )

    def embodiment(self, name: str) -> EmbodimentSpec:
        for s in self.embodiments:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "flow": dataclasses.asdict(self.flow),
            "codec": self.codec,
            "codec_kwargs": dict(self.codec_kwargs),
            "image": dataclasses.asdict(self.image),
            "text": dataclasses.asdict(self.text),
            "embodiments": [s.to_dict() for s in self.embodiments],
            "norm": dataclasses.asdict(self.norm),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        # embodiment specs have their own reader (action dims as names or records); the rest is plain
        specs = tuple(EmbodimentSpec.from_dict(s) for s in d.get("embodiments", []))
        kind = (d.get("text") or {}).get("kind")
        if kind in ("fallback", "clip"):
            raise ValueError(
                f"PolicyConfig.text: kind {kind!r} is the pooled single-token text of schema 2.x; this "
                "version conditions on token sequences, so the policy must be fine-tuned again on data "
                "curated with it"
            )
        return from_dict(cls, {**d, "embodiments": specs}, "PolicyConfig")


# ---------------------------------------------------------------- the backbone


def _find_model_config(node: Any) -> dict[str, Any] | None:
    """The first dict (depth first) that reads as a ModelConfig."""
    need = {"dim", "layers", "heads", "head_dim", "ffn_dim"}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if isinstance(node, dict):
        if need <= set(node) and set(node) <= fields:
            return node
        for v in node.values():
            found = _find_model_config(v)
            if found is not None:
                return found
    return None


def resolve_model_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub model repo id, downloaded (cached) at ``revision``."""
    local = local_model_folder(path_or_repo_id)
    if local is not None:
        return local
    return download_snapshot(
        str(path_or_repo_id), repo_type="model", revision=revision, allow_patterns=BACKBONE_FILES
    )


def load_backbone(
    path_or_repo_id: str | os.PathLike, revision: str | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """``(ModelConfig, transformer state dict)`` of our pretrained checkpoint (see module docstring)."""
    init = resolve_init(path_or_repo_id, revision)
    if init.kind == "wan":
        raise ValueError(
            f"{path_or_repo_id}: a diffusers Wan transformer, not our checkpoint; load it with "
            "GWPPolicyModel.from_backbone (gwp finetune --init), which maps its weights"
        )
    folder = init.folder
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    missing = f"missing; a pretrained checkpoint needs {' and '.join(BACKBONE_FILES)}"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: {missing}")
    found = _find_model_config(read_json_object(cfg_path, missing))
    if found is None:
        raise ValueError(
            f"{cfg_path}: holds no model config (a dict with dim, layers, heads, head_dim, ffn_dim)"
        )
    cfg = ModelConfig.from_dict(found)
    sd = load_file(str(weights))
    anchors = [k for k in sd if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if len(anchors) != 1:
        raise ValueError(
            f"{weights}: expected exactly one '{_ANCHOR}' tensor to locate the transformer, found {anchors}"
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    return cfg, {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- the model


class GWPPolicyModel(HubMixin, nn.Module):
    config_class = PolicyConfig

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = model_class(cfg.model)(cfg.model)  # either kind (pretrain/action_expert.py)
        m = cfg.model
        self.codec: LatentCodec = make_model_codec(
            cfg.codec, cfg.codec_kwargs, m.video_geometry, m.vae_temporal
        )
        if self.codec.latent_channels != cfg.model.latent_channels:
            raise ValueError(
                f"codec {cfg.codec!r} gives {self.codec.latent_channels} latent channels, the model "
                f"takes {cfg.model.latent_channels}"
            )
        self.norm_stats = None

    @classmethod
    def from_backbone(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        base: ModelConfig | None = None,
        **policy_fields: Any,
    ) -> GWPPolicyModel:
        """A policy whose transformer starts from our checkpoint or a diffusers Wan transformer.

        ``policy_fields``: the other :class:`PolicyConfig` fields, plus ``chunk`` / ``num_future``
        (P, K of the fine-tuning data), which replace the backbone's. ``base``: for Wan weights,
        the preset whose non-Wan fields (embodiment MLPs, video geometry) the model takes
        (default ``wan22-5b``).
        """
        over = {k: policy_fields.pop(k) for k in ("chunk", "num_future") if k in policy_fields}
        init = resolve_init(path_or_repo_id, revision)
        if init.kind == "wan":
            from pretrain.config import get_model_config
            from pretrain.wan_adapter import load_wan_backbone, model_config_from_wan, read_wan_config

            check_init_codec(init, policy_fields.get("codec", PolicyConfig.codec))
            mcfg = model_config_from_wan(read_wan_config(init.folder), base or get_model_config("wan22-5b"))
            model = cls(PolicyConfig(model=dataclasses.replace(mcfg, **over), **policy_fields))
            load_wan_backbone(model.transformer, init.folder, strict=True)
            return model
        mcfg, sd = load_backbone(init.folder)
        model = cls(PolicyConfig(model=dataclasses.replace(mcfg, **over), **policy_fields))
        missing, unexpected = model.transformer.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path_or_repo_id}: weights do not fit the transformer of its own config: missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        return model

    # the DeepSpeed engine switches activation checkpointing through this attribute
    @property
    def activation_checkpointing(self) -> bool:
        return self.transformer.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, on: bool) -> None:
        self.transformer.activation_checkpointing = on

    def _apply(self, fn: Any, recurse: bool = True) -> GWPPolicyModel:
        # .to()/.cuda()/.half() all come here; the codec is not a submodule, so move it by hand
        out = super()._apply(fn, recurse)
        self.codec.to(self.transformer.video_in.weight.device)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        """The transformer's forward (``mode="joint"`` by default); see ``ActionVideoTransformer``."""
        return self.transformer(*args, **kwargs)

    # ------------------------------------------------------------ batch → model inputs

    @torch.no_grad()
    def encode_frames(self, frames_B3FHW: Tensor) -> Tensor:
        """Frames in [-1, 1] → latents [B, C, F', h, w] on the model's device, in its dtype."""
        w = self.transformer.video_in.weight
        return self.codec.encode(frames_B3FHW.to(w.device).float()).to(w.device, w.dtype)

    @torch.no_grad()
    def decode_future(self, obs_latent_BC1hw: Tensor, future_latent_BCKhw: Tensor) -> Tensor:
        """Future frames [B, 3, F, H, W] in [-1, 1] of predicted latents (F = K per frame, K·t as a clip).

        The observation latent goes in first: in the clip geometry the VAE decodes the future
        latent frames as the continuation of the observation, as it encoded them.
        """
        lat = torch.cat([obs_latent_BC1hw, future_latent_BCKhw.to(obs_latent_BC1hw)], dim=2)
        return self.codec.decode(lat.float())[:, :, 1:].float()

    def batch_latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(obs [B, C, 1, h, w], future [B, C, K, h, w])`` from cached latents or frames."""
        if "obs_latents" in batch:
            return batch["obs_latents"], batch["future_latents"]
        if "obs_frames" not in batch:
            raise ValueError("batch has neither obs_latents nor obs_frames (load the shards with frames)")
        obs_B3HW, fut_B3KHW = batch["obs_frames"], batch["future_frames"]
        if obs_B3HW.dtype == torch.uint8:
            obs_B3HW, fut_B3KHW = tensor_to_unit_range(obs_B3HW), tensor_to_unit_range(fut_B3KHW)
        lat = self.encode_frames(torch.cat([obs_B3HW[:, :, None], fut_B3KHW], dim=2))
        return lat[:, :, :1], lat[:, :, 1:]

    def batch_text(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
        """``(states [B, L, T] in the model's dtype, mask [B, L])`` from ``text_states``/``text_mask``."""
        text_BLT, mask_BL = text_states(batch, self.cfg.model.text_dim, device)
        return text_BLT.to(self.transformer.dtype), mask_BL

    # ------------------------------------------------------------ training

    def joint_loss(
        self,
        batch: dict[str, Any],
        forward: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """λ_a·action + λ_v·video flow loss of one batch; ``forward`` is the callable to run
        (the DeepSpeed engine during training, ``self`` otherwise)."""
        forward = forward or self
        act_BP32 = batch["action"].float()
        B, P = act_BP32.shape[:2]
        if self.cfg.model.chunk != P:
            raise ValueError(
                f"batch action chunk is {P}, the policy was configured for {self.cfg.model.chunk}"
            )
        mask_B32 = batch["action_mask"]
        valid_B1D = mask_B32.float()[:, None, :]
        act_BP32 = act_BP32 * valid_B1D
        # float32 latents: ε − x formed in the model's bf16 would round the regression target
        obs, fut = (t.float() for t in self.batch_latents(batch))
        mc = self.cfg.model
        fut = mc.video_target(obs, fut)
        fc, dev = self.cfg.flow, act_BP32.device
        s_a = sample_sigma(B, fc.action_shift, generator, dev)
        s_v = sample_sigma(B, fc.video_shift, generator, dev)
        # padded dims get no noise: action_in sees zeros there, as the samplers give it
        eps_a = torch.randn(act_BP32.shape, generator=generator, device=dev) * valid_B1D
        eps_v = torch.randn(fut.shape, generator=generator, device=dev, dtype=fut.dtype)
        out: ModelOutput = forward(
            obs,
            add_noise(fut, eps_v, s_v),
            batch["state"].float() * batch["state_mask"].float(),
            batch["embodiment_id"],
            add_noise(act_BP32, eps_a, s_a),
            s_a,
            s_v,
            *self.batch_text(batch, dev),
            "joint",
        )
        loss: FlowLoss = flow_loss(
            fc,
            action_pred_BP32=out.action_velocity_BP32,
            action_target_BP32=velocity_target(act_BP32, eps_a),
            action_mask_B32=mask_B32,
            video_pred_BCKHW=out.video_velocity_BCKHW,
            # the residual model's video head predicts the clean target itself
            video_target_BCKHW=fut if mc.video_residual else velocity_target(fut, eps_v),
        )
        return loss.total, {"action_loss": loss.action.detach(), "video_loss": loss.video.detach()}
