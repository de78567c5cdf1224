"""Model configuration: one frozen dataclass and a registry of named presets.

``ModelConfig`` fixes the geometry of the action-centred video transformer
(``pretrain/model.py``, ARCHITECTURE.md "The model"). Every preset runs the same code:

* ``debug``    — CPU, tiny (2 layers, 64 wide). Used by the tests and the CPU embedded default.
* ``small``    — ~130 M parameters, one GPU.
* ``wan22-5b`` — the paper's backbone geometry (Wan2.2-TI2V-5B): 30 layers, 24 heads × 128 =
                 3072 hidden, FFN 14336, 48 latent channels, patch (1, 2, 2), text dim 4096.
                 GPU only; its Wan weights load through ``pretrain/wan_adapter.py``.
* ``debug-mot``, ``wan22-5b-mot`` — the same backbones with an action expert (GWP-0.5's
                 Mixture-of-Transformers, ``pretrain/action_expert.py``): ``debug``'s with a 32-wide
                 expert, ``wan22-5b``'s with GWP-0.5's 1024-wide one (FFN 4096).

All presets use 48 latent channels (the Wan2.2 VAE; a 4×4 RGB pixel-patch codec has the same
channel count), action/state vectors padded to 32 dims, p = 48 action tokens and K = 4 future
sample frames (the paper's window geometry: offsets 12, 24, 36, 48 after the observation).
Derive variants with ``dataclasses.replace``.

**Video geometry** (``video_geometry``) — how the 1 + K sample frames become latent frames:

* ``per_frame`` (``debug``, ``small``) — every frame is encoded on its own (the pixel codec, or the
  Wan VAE's first-frame path): 1 + K latent frames, the future ones at RoPE frames 1..K.
* ``clip`` (``wan22-5b``, GWP's) — observation + K future frames are one clip through the video
  VAE's ``vae_temporal``× temporal compression: latent frame 0 is the observation alone (the
  causal VAE encodes the first frame by itself) and is the clean context; the K future frames
  become K / ``vae_temporal`` noisy latent frames at RoPE frames 1, 2, … — the layout Wan2.2-TI2V
  was trained on. At 384×320 with K = 4 that is C = 1 + 120, A = 48, V = 120 tokens.

``future_latent_frames`` is the number of noisy latent frames either way.

Presets live in one registry (``schemas/registry.py``): ``register_model_config`` rejects
duplicate names and ``get_model_config`` answers a misspelt name with "did you mean …".
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from schemas.config import from_dict
from schemas.registry import Registry

VideoGeometry = Literal["per_frame", "clip"]
VIDEO_GEOMETRIES: tuple[str, ...] = typing.get_args(VideoGeometry)

if TYPE_CHECKING:  # the config stays importable without torch (command-line checks)
    from torch import Tensor


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dim: int  # model width D = heads · head_dim
    layers: int
    heads: int
    head_dim: int
    ffn_dim: int
    latent_channels: int = 48  # C of the latent video [B, C, F, H, W]
    patch: tuple[int, int, int] = (1, 2, 2)  # (frames, height, width) per video token
    text_dim: int = 4096  # width of the text-encoder states fed to cross-attention
    action_dim: int = 32  # padded action width (schemas.embodiment.MAX_DIM)
    state_dim: int = 32  # padded state width
    chunk: int = 48  # p: action tokens per sample
    num_future: int = 4  # K: future sample frames the data provides (the model accepts any K ≥ 1)
    video_geometry: VideoGeometry = "per_frame"  # "per_frame" | "clip" (see the module docstring)
    vae_temporal: int = 4  # clip geometry: sample frames per future latent frame (Wan2.2 VAE: 4)
    max_embodiments: int = 16  # rows of the per-embodiment first/last linear layers
    mlp_hidden: int = 1024  # width of the embodiment MLP encoders/decoders
    mlp_inner_layers: int = 1  # shared hidden→hidden layers inside those MLPs
    freq_dim: int = 256  # sinusoidal timestep features
    eps: float = 1e-6
    qk_norm: bool = True  # RMSNorm over all heads on q and k (Wan "rms_norm_across_heads")
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention (Wan norm2)
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0  # σ ∈ [0, 1] enters the embedding as σ·1000, as Wan's t
    # The video target is the future latent minus the observation latent, and the video head
    # predicts that clean target (the samplers turn it into a velocity, pretrain.flow.velocity_of_clean)
    # instead of a velocity: "nothing moves" is then the zero network, so a small model spends its
    # capacity on what changes. The video loss is then the MSE of the clean prediction, and the
    # head starts at zero (a random head starts below the repeat baseline and stays there for
    # hundreds of steps: BENCHMARKS.md, "Predicted video at CPU scale").
    video_residual: bool = False
    # The action expert (GWP-0.5's Mixture-of-Transformers, ``pretrain/action_expert.py``): state
    # and action tokens run through their own narrower blocks of this width and FFN width, the
    # visual tokens through the backbone's; one self-attention spans both. 0 = off: one shared
    # backbone for every token, as GWP-0.
    action_expert_dim: int = 0
    action_expert_ffn_dim: int = 0
    # How the expert starts when a backbone (Wan) is loaded into the visual stream: "fresh"
    # (random) or "sliced" (each expert tensor is the leading slice of its backbone twin, as
    # GWP-0.5's slice-loading); BENCHMARKS.md, "The action expert", measures the two.
    action_expert_init: str = "fresh"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"ModelConfig {self.name!r}: {field} {why}")

        for f in (
            "dim",
            "layers",
            "heads",
            "head_dim",
            "ffn_dim",
            "latent_channels",
            "text_dim",
            "action_dim",
            "state_dim",
            "chunk",
            "num_future",
            "max_embodiments",
            "mlp_hidden",
            "freq_dim",
            "vae_temporal",
        ):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(f, f"must be a positive int, got {v!r}")
        if not isinstance(self.mlp_inner_layers, int) or self.mlp_inner_layers < 0:
            raise bad("mlp_inner_layers", f"must be an int ≥ 0, got {self.mlp_inner_layers!r}")
        if self.dim != self.heads * self.head_dim:
            raise bad("dim", f"must equal heads·head_dim = {self.heads * self.head_dim}, got {self.dim}")
        if self.head_dim % 2:
            raise bad("head_dim", f"must be even for RoPE, got {self.head_dim}")
        if self.head_dim < 6:
            raise bad(
                "head_dim", f"must be ≥ 6 to split RoPE over (frame, height, width), got {self.head_dim}"
            )
        if len(self.patch) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch):
            raise bad("patch", f"must be three positive ints, got {self.patch!r}")
        if self.patch[0] != 1:
            raise bad("patch", f"frame patch must be 1 (the observation is a single frame), got {self.patch}")
        if self.video_geometry not in VIDEO_GEOMETRIES:
            raise bad("video_geometry", f"must be one of {VIDEO_GEOMETRIES}, got {self.video_geometry!r}")
        if self.video_geometry == "clip" and self.num_future % self.vae_temporal:
            raise bad(
                "num_future",
                f"{self.num_future} future frames do not fill whole latent frames of the clip geometry "
                f"({self.vae_temporal} frames each); use a multiple of {self.vae_temporal} or "
                "video_geometry='per_frame'",
            )
        if self.freq_dim % 2:
            raise bad("freq_dim", f"must be even, got {self.freq_dim}")
        if not isinstance(self.video_residual, bool):
            raise bad("video_residual", f"must be a bool, got {self.video_residual!r}")
        for f in ("action_expert_dim", "action_expert_ffn_dim"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(f, f"must be an int ≥ 0 (0 = no action expert), got {v!r}")
        if (self.action_expert_dim == 0) != (self.action_expert_ffn_dim == 0):
            raise bad(
                "action_expert_dim/action_expert_ffn_dim",
                "must both be set (an action expert) or both be 0 (the shared backbone), got "
                f"{self.action_expert_dim} and {self.action_expert_ffn_dim}",
            )
        if self.action_expert_init not in ("fresh", "sliced"):
            raise bad("action_expert_init", f"must be 'fresh' or 'sliced', got {self.action_expert_init!r}")
        if not self.eps > 0 or not self.rope_theta > 0 or not self.timestep_scale > 0:
            raise bad("eps/rope_theta/timestep_scale", "must be positive")

    @property
    def has_action_expert(self) -> bool:
        return self.action_expert_dim > 0

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head dims rotated by (frame, height, width) position, as Wan splits them."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)

    @property
    def future_latent_frames(self) -> int:
        """Noisy latent frames per sample: K (per frame) or K / vae_temporal (one clip)."""
        if self.video_geometry == "clip":
            return self.num_future // self.vae_temporal
        return self.num_future

    def token_counts(self, latent_height: int, latent_width: int, state: bool = True) -> dict[str, int]:
        """Tokens per group for a latent grid: context (state + observation), action, video."""
        hw = (latent_height // self.patch[1]) * (latent_width // self.patch[2])
        return {"context": int(state) + hw, "action": self.chunk, "video": self.future_latent_frames * hw}

    @property
    def patch_dim(self) -> int:
        """Values per video token: C · pt · ph · pw."""
        return self.latent_channels * self.patch[0] * self.patch[1] * self.patch[2]

    def video_target(self, obs_BC1hw: Tensor, future_BCKhw: Tensor) -> Tensor:
        """What the flow learns of the future latents: themselves, or their change from the observation."""
        return future_BCKhw - obs_BC1hw if self.video_residual else future_BCKhw

    def video_future(self, obs_BC1hw: Tensor, target_BCKhw: Tensor) -> Tensor:
        """Inverse of :meth:`video_target`: the future latents of a sampled target."""
        return target_BCKhw + obs_BC1hw.to(target_BCKhw.dtype) if self.video_residual else target_BCKhw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, d, "ModelConfig")


MODEL_PRESETS: Registry[ModelConfig] = Registry("model config")


def register_model_config(cfg: ModelConfig) -> ModelConfig:
    return MODEL_PRESETS.register(cfg.name, cfg)


def get_model_config(name: str) -> ModelConfig:
    return MODEL_PRESETS.get(name)


def list_model_configs() -> list[str]:
    return MODEL_PRESETS.names()


register_model_config(
    ModelConfig(
        name="debug",
        dim=64,
        layers=2,
        heads=4,
        head_dim=16,
        ffn_dim=128,
        text_dim=512,  # wider than the CPU presets' 64-d hashed word tokens (zero-padded into it)
        mlp_hidden=64,
        freq_dim=64,
    )
)
# derived presets state only what differs from their base
register_model_config(  # debug's size and cost, with the residual video target (BENCHMARKS.md)
    replace(get_model_config("debug"), name="cpu-video", video_residual=True)
)
register_model_config(
    ModelConfig(
        name="small",
        dim=768,
        layers=12,
        heads=12,
        head_dim=64,
        ffn_dim=3072,
        text_dim=512,
        mlp_hidden=512,
    )
)
register_model_config(
    ModelConfig(
        name="wan22-5b",
        dim=3072,
        layers=30,
        heads=24,
        head_dim=128,
        ffn_dim=14336,
        text_dim=4096,  # umT5-XXL states, as Wan2.2
        mlp_hidden=1024,
        video_geometry="clip",  # GWP: observation + 4 future frames through the VAE as one clip
    )
)
register_model_config(  # debug's visual stream; state and actions through a half-width expert
    replace(get_model_config("debug"), name="debug-mot", action_expert_dim=32, action_expert_ffn_dim=128)
)
register_model_config(  # GWP-0.5: the Wan2.2-5B visual stream and a 1024-wide action expert
    replace(
        get_model_config("wan22-5b"), name="wan22-5b-mot", action_expert_dim=1024, action_expert_ffn_dim=4096
    )
)
