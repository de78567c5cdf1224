"""Latent codecs: pixels ↔ the latents the video transformer works on (ARCHITECTURE.md, "Objective and sampling").

One interface, :class:`LatentCodec`, and two implementations:

* :class:`PixelPatchCodec` — no learning. Space-to-depth of ``s × s`` pixel patches:
  ``frames [B, 3, F, H, W] → latents [B, 3·s², F, H/s, W/s]``, an exact inverse (a pure
  reshape, so encode→decode is bit-exact). The default ``s = 4`` gives 48 channels, the
  same as the Wan2.2 VAE's ``z_dim = 48``, so a model configured for one codec has the same
  latent channel count with the other (only the spatial factor differs: 4 vs 16). It is
  the CPU default and what the tests use; values stay in the pixel range [-1, 1].
* :class:`WanVAECodec` — wraps ``diffusers``' ``AutoencoderKLWan``. Wan2.2's VAE
  (``Wan-AI/Wan2.2-TI2V-5B-Diffusers``, subfolder ``vae``): ``z_dim 48``, ``patch_size 2``
  followed by three 2× residual downsampling stages → spatial factor 16, two temporal
  downsamplings → temporal factor 4, and per-channel ``latents_mean`` / ``latents_std`` in
  its config. Latents are normalised the way diffusers' Wan pipelines do it,
  ``z_norm = (z − mean) / std`` (inverted before decoding), and the posterior's mode (its
  mean) is used so that encoding is deterministic and cacheable.

Frames of a sample are *not* consecutive video frames: one current frame and K future
frames at stride Δ (the window geometry). A causal video VAE would blend them as if they were a
clip, so by default every frame is encoded as its own single-frame clip — for the Wan VAE
that is the causal first-frame path (the encoder sees one frame, the temporal
downsampling pads it) — and ``latent_shape(F, H, W) = (C, F, H/s, W/s)``.
``WanVAECodec(frame_mode="video")`` encodes the F frames as one clip instead (first frame
alone, then groups of 4 → ``1 + (F−1)/4`` latent frames). That is GWP's geometry — the
observation and the frames at offsets 12/24/36/48 through the VAE as one clip — and Wan2.2's
own training layout; the model config chooses (``ModelConfig.video_geometry``) and
:func:`make_model_codec` builds the codec that fits it: ``clip`` → ``frame_mode="video"``,
``per_frame`` → ``"independent"``. The pixel codec has no temporal compression and serves only
the per-frame geometry.

Device: a codec follows the model it serves (:meth:`LatentCodec.to`; the policy model calls it
from its own ``.to()``), and :meth:`WanVAECodec.encode` returns latents on the device of its input
frames, so latents land where the model is whatever the VAE's placement.

Latent caching: :class:`LatentCache` encodes the frames of one Parquet shard once and
stores the latents in ``<root>/<codec.cache_key()>/<shard stem>.safetensors`` together
with the ordered ``sample_id`` list, so an entry is keyed by (sample_id, codec name +
config hash); the next epoch or run reads it back instead of re-encoding.

Shape legend: B batch, C channels, F frames, H/W pixel height/width, h/w latent height/width.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from schemas.registry import Registry

# ---- interface ---------------------------------------------------------------------------


class LatentCodec(abc.ABC):
    """Encode frames ``[B, 3, F, H, W]`` in [-1, 1] to latents ``[B, C, F', h, w]`` and back."""

    name: str = ""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abc.abstractmethod
    def temporal_compression(self) -> int:
        """Frames per latent frame *as this codec treats sample frames* (1 = frame by frame)."""

    @property
    @abc.abstractmethod
    def spatial_compression(self) -> int: ...

    @abc.abstractmethod
    def encode(self, frames_BCFHW: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, latents_BCFhw: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Everything that changes the latents; hashed into :meth:`cache_key`."""

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F', h, w)`` of the latents of ``frames`` frames of ``height × width`` pixels."""
        s, t = self.spatial_compression, self.temporal_compression
        if frames < 1:
            raise ValueError(f"{self.name}: need at least one frame, got {frames}")
        if height % s or width % s:
            raise ValueError(
                f"{self.name}: frame size {height}x{width} is not divisible by the spatial factor {s}"
            )
        if (frames - 1) % t:
            raise ValueError(f"{self.name}: {frames} frames; frames - 1 must be divisible by {t}")
        return (self.latent_channels, 1 + (frames - 1) // t, height // s, width // s)

    def to(self, device: torch.device | str) -> LatentCodec:
        """Move the codec's weights (if any) to ``device``; returns self."""
        return self

    def cache_key(self) -> str:
        """``<name>-<12 hex>``: the codec name plus a hash of its config (cache folder name)."""
        blob = json.dumps({"name": self.name, **self.config_dict()}, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def _check_frames(self, frames_BCFHW: torch.Tensor) -> None:
        if frames_BCFHW.ndim != 5 or frames_BCFHW.shape[1] != 3:
            raise ValueError(f"{self.name}: expected frames [B, 3, F, H, W], got {tuple(frames_BCFHW.shape)}")
        self.latent_shape(*frames_BCFHW.shape[2:])  # raises on indivisible sizes

    def _check_latents(self, latents_BCFhw: torch.Tensor) -> None:
        if latents_BCFhw.ndim != 5 or latents_BCFhw.shape[1] != self.latent_channels:
            raise ValueError(
                f"{self.name}: expected latents [B, {self.latent_channels}, F, h, w], "
                f"got {tuple(latents_BCFhw.shape)}"
            )


# ---- pixel patches -------------------------------------------------------------------------


class PixelPatchCodec(LatentCodec):
    """Space-to-depth of ``patch × patch`` pixel patches; exact inverse, no parameters."""

    name = "pixel"

    def __init__(self, patch: int = 4):
        if not isinstance(patch, int) or patch < 1:
            raise ValueError(f"pixel codec: patch must be a positive int, got {patch!r}")
        self.patch = patch

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch * self.patch

    @property
    def temporal_compression(self) -> int:
        return 1

    @property
    def spatial_compression(self) -> int:
        return self.patch

    def config_dict(self) -> dict[str, Any]:
        return {"patch": self.patch}

    def encode(self, frames_BCFHW: torch.Tensor) -> torch.Tensor:
        self._check_frames(frames_BCFHW)
        p = self.patch
        return rearrange(frames_BCFHW, "b c f (h p1) (w p2) -> b (c p1 p2) f h w", p1=p, p2=p)

    def decode(self, latents_BCFhw: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents_BCFhw)
        p = self.patch
        return rearrange(latents_BCFhw, "b (c p1 p2) f h w -> b c f (h p1) (w p2)", c=3, p1=p, p2=p)


# ---- Wan VAE -----------------------------------------------------------------------------------

FRAME_MODES = ("independent", "video")
WAN22_VAE_REPO = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"  # its ``vae`` subfolder holds the 48-channel VAE


class WanVAECodec(LatentCodec):
    """Wan2.x video VAE (``diffusers.AutoencoderKLWan``) with its latent normalisation.

    ``frame_mode="independent"`` (default) encodes each sample frame as a one-frame clip
    (see the module docstring); ``"video"`` encodes the frames as one causal clip.
    ``micro_batch`` bounds how many clips go through the VAE at once.
    """

    name = "wan-vae"

    def __init__(
        self,
        vae: Any,
        *,
        frame_mode: str = "independent",
        micro_batch: int = 8,
        source: str | None = None,
    ):
        from diffusers import AutoencoderKLWan

        if not isinstance(vae, AutoencoderKLWan):
            raise TypeError(f"wan-vae codec: expected an AutoencoderKLWan, got {type(vae).__name__}")
        if frame_mode not in FRAME_MODES:
            raise ValueError(f"wan-vae codec: frame_mode must be one of {FRAME_MODES}, got {frame_mode!r}")
        cfg = vae.config
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(
                f"wan-vae codec: latents_mean/std have {len(cfg.latents_mean)}/{len(cfg.latents_std)} "
                f"entries, z_dim is {cfg.z_dim}"
            )
        self.vae = vae.eval().requires_grad_(False)
        self.frame_mode = frame_mode
        self.micro_batch = int(micro_batch)
        self.source = source
        # The architecture fixes the factors; the config's scale_factor_* are only declared.
        self._spatial = (cfg.patch_size or 1) * 2 ** (len(cfg.dim_mult) - 1)
        self._temporal = 2 ** sum(bool(t) for t in cfg.temperal_downsample[: len(cfg.dim_mult) - 1])
        if cfg.scale_factor_spatial is not None and cfg.scale_factor_spatial != self._spatial:
            raise ValueError(
                f"wan-vae codec: config scale_factor_spatial={cfg.scale_factor_spatial} but the architecture "
                f"(patch_size {cfg.patch_size}, {len(cfg.dim_mult) - 1} downsamplings) gives {self._spatial}"
            )
        self._weights_digest: str | None = None

    # -- construction --
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = WAN22_VAE_REPO,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **kw: Any,
    ) -> WanVAECodec:
        """Load from a local folder (``config.json`` + weights, or a pipeline folder with ``vae/``)
        or a Hub model id (default subfolder ``vae``)."""
        from diffusers import AutoencoderKLWan

        where = str(path_or_repo)
        local = Path(where).expanduser()
        if local.is_dir():
            if (
                subfolder is None
                and not (local / "config.json").is_file()
                and (local / "vae" / "config.json").is_file()
            ):
                subfolder = "vae"
            if not (local / (subfolder or "") / "config.json").is_file():
                raise FileNotFoundError(f"wan-vae codec: {local / (subfolder or '')} has no config.json")
        elif subfolder is None:
            subfolder = "vae"
        try:
            vae = AutoencoderKLWan.from_pretrained(
                where, subfolder=subfolder, revision=revision, torch_dtype=torch_dtype
            )
        except (OSError, ValueError) as err:
            kind = "local folder" if local.is_dir() else "Hub repo id"
            raise RuntimeError(
                f"wan-vae codec: cannot load AutoencoderKLWan from {kind} {where!r} "
                f"(subfolder={subfolder!r}, revision={revision!r}). Without network access pass a local "
                f"folder holding the VAE's config.json and weights. Cause: {err}"
            ) from err
        # a local folder by its absolute path: the same VAE named from two working directories
        # (curation storing latents, training checking them) is one codec
        named = str(local.resolve()) if local.is_dir() else where
        source = f"{named}@{revision or 'main'}/{subfolder or ''}"
        return cls(vae.to(device), source=source, **kw)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, seed: int = 0, **kw: Any) -> WanVAECodec:
        """A randomly initialised VAE from an ``AutoencoderKLWan`` config (tests, smoke runs)."""
        from diffusers import AutoencoderKLWan

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**config)
        return cls(vae, **kw)

    # -- properties --
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def temporal_compression(self) -> int:
        return 1 if self.frame_mode == "independent" else self._temporal

    @property
    def spatial_compression(self) -> int:
        return self._spatial

    @property
    def vae_temporal_compression(self) -> int:
        """The VAE's own temporal factor on real video (4 for Wan2.2)."""
        return self._temporal

    def config_dict(self) -> dict[str, Any]:
        cfg = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
        out: dict[str, Any] = {"vae": cfg, "frame_mode": self.frame_mode, "dtype": str(self._param.dtype)}
        if self.source is not None:
            out["source"] = self.source
        else:  # random or hand-built weights: the weights themselves identify the codec
            if self._weights_digest is None:
                h = hashlib.sha256()
                for k, v in sorted(self.vae.state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
                self._weights_digest = h.hexdigest()[:16]
            out["weights"] = self._weights_digest
        return out

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    def to(self, device: torch.device | str) -> WanVAECodec:
        self.vae.to(device)  # the dtype stays the VAE's own (chosen at load)
        return self

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        mean_C = torch.tensor(cfg.latents_mean, dtype=like.dtype, device=like.device)
        std_C = torch.tensor(cfg.latents_std, dtype=like.dtype, device=like.device)
        return mean_C.view(1, -1, 1, 1, 1), std_C.view(1, -1, 1, 1, 1)

    def normalize(self, raw_BCFhw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(raw_BCFhw)
        return (raw_BCFhw - mean) / std

    def denormalize(self, latents_BCFhw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents_BCFhw)
        return latents_BCFhw * std + mean

    # -- encode / decode --
    def _clips(self, x_BCFHW: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.frame_mode == "independent":
            return rearrange(x_BCFHW, "b c f h w -> (b f) c 1 h w"), x_BCFHW.shape[2]
        return x_BCFHW, 1

    def _unclips(self, y_NCFhw: torch.Tensor, frames: int) -> torch.Tensor:
        if self.frame_mode == "independent":
            return rearrange(y_NCFhw, "(b f) c 1 h w -> b c f h w", f=frames)
        return y_NCFhw

    @torch.no_grad()
    def encode(self, frames_BCFHW: torch.Tensor) -> torch.Tensor:
        self._check_frames(frames_BCFHW)
        p = self._param
        clips, frames = self._clips(frames_BCFHW.to(p.device, p.dtype))
        raw = torch.cat(
            [self.vae.encode(c).latent_dist.mode() for c in clips.split(self.micro_batch)], dim=0
        )  # [N, z, F', h, w]
        return self.normalize(self._unclips(raw.float(), frames)).to(frames_BCFHW.device)

    @torch.no_grad()
    def decode(self, latents_BCFhw: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents_BCFhw)
        p = self._param
        raw, frames = self._clips(self.denormalize(latents_BCFhw.float()).to(p.device, p.dtype))
        out = torch.cat([self.vae.decode(c).sample for c in raw.split(self.micro_batch)], dim=0)
        return self._unclips(out.float(), frames).to(latents_BCFhw.device)


# ---- registry ------------------------------------------------------------------------------------

_CODECS: Registry[Callable[..., LatentCodec]] = Registry("codec")


def register_codec(name: str, factory: Callable[..., LatentCodec]) -> None:
    _CODECS.register(name, factory)


def list_codecs() -> list[str]:
    return _CODECS.names()


def make_codec(name: str, **kw: Any) -> LatentCodec:
    """Build a codec by name: ``"pixel"`` (``patch=``) or ``"wan-vae"`` (``path_or_repo=`` or ``config=``)."""
    return _CODECS.get(name)(**kw)


def _make_wan(config: dict[str, Any] | None = None, **kw: Any) -> WanVAECodec:
    if config is not None:
        return WanVAECodec.from_config(config, **kw)
    return WanVAECodec.from_pretrained(**kw)


register_codec("pixel", PixelPatchCodec)
register_codec("wan-vae", _make_wan)


def make_model_codec(name: str, kwargs: dict[str, Any], geometry: str, vae_temporal: int = 4) -> LatentCodec:
    """The codec ``name`` set up for a model's video geometry (``ModelConfig.video_geometry``).

    ``clip`` needs a codec that compresses ``vae_temporal`` frames into one latent frame; a
    ``frame_mode`` in ``kwargs`` that contradicts the geometry is refused rather than overridden.
    """
    kw = dict(kwargs)
    if name == "wan-vae":
        mode = "video" if geometry == "clip" else "independent"
        if kw.setdefault("frame_mode", mode) != mode:
            raise ValueError(
                f"wan-vae codec: frame_mode {kw['frame_mode']!r} does not fit the model's video geometry "
                f"{geometry!r} (which encodes with frame_mode {mode!r}); drop frame_mode from the codec settings"
            )
    codec = make_codec(name, **kw)
    if geometry == "clip" and codec.temporal_compression != vae_temporal:
        raise ValueError(
            f"codec {name!r} encodes {codec.temporal_compression} frame(s) per latent frame, the model's 'clip' "
            f"video geometry needs a video VAE with {vae_temporal}× temporal compression: use --codec wan-vae "
            "(Wan2.2 VAE), or a model preset with video_geometry 'per_frame' (debug, small) for the "
            f"{name!r} codec"
        )
    return codec


# ---- latent cache ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedLatents:
    """Latents of one shard: ``latents_NCFhw[i]`` belongs to ``sample_ids[i]``."""

    sample_ids: tuple[str, ...]
    latents_NCFhw: torch.Tensor

    def lookup(self, sample_ids: Iterable[str], where: str = "latent cache") -> torch.Tensor:
        index = {s: i for i, s in enumerate(self.sample_ids)}
        try:
            rows = [index[s] for s in sample_ids]
        except KeyError as err:
            raise KeyError(f"{where}: no latents for sample {err.args[0]!r}") from None
        return self.latents_NCFhw[rows]


class LatentCache:
    """Per-shard latent files under ``<root>/<codec.cache_key()>/``; encode once, reuse after.

    Frames come from the Sample video bytes via :func:`pretrain.data.iter_shard_frames`,
    ``batch_size`` rows at a time. For the Wan VAE, fill the cache up front on the GPU
    process (``get_or_encode`` over every shard) rather than on demand in loader workers.
    """

    def __init__(self, root: str | os.PathLike, codec: LatentCodec, *, batch_size: int = 16):
        self.root = Path(root)
        self.codec = codec
        self.batch_size = batch_size
        self.folder = self.root / codec.cache_key()

    def path_for(self, shard_path: str | os.PathLike) -> Path:
        return self.folder / f"{Path(shard_path).stem}.safetensors"

    def load(
        self, shard_path: str | os.PathLike, sample_ids: Iterable[str] | None = None
    ) -> CachedLatents | None:
        """The cached latents of a shard, or None when absent or stale (other sample ids)."""
        from safetensors import safe_open

        path = self.path_for(shard_path)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("codec") != self.codec.cache_key():
                return None
            ids = tuple(json.loads(meta.get("sample_ids", "[]")))
            if sample_ids is not None and set(sample_ids) - set(ids):
                return None
            return CachedLatents(ids, f.get_tensor("latents"))

    def encode_shard(self, shard_path: str | os.PathLike) -> CachedLatents:
        from safetensors.torch import save_file

        from pretrain.data import iter_shard_frames

        ids: list[str] = []
        parts: list[torch.Tensor] = []
        for batch_ids, frames_NCFHW in iter_shard_frames(shard_path, self.batch_size):
            ids.extend(batch_ids)
            parts.append(self.codec.encode(frames_NCFHW).to("cpu", torch.float32).contiguous())
        if not parts:
            raise ValueError(f"{shard_path}: shard has no rows to encode")
        latents = torch.cat(parts, dim=0)
        path = self.path_for(shard_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        meta = {
            "codec": self.codec.cache_key(),
            "sample_ids": json.dumps(ids),
            "shard": Path(shard_path).name,
        }
        save_file({"latents": latents}, str(tmp), metadata=meta)
        os.replace(tmp, path)  # atomic: concurrent ranks at worst both encode
        (self.folder / "codec.json").write_text(
            json.dumps({"name": self.codec.name, **self.codec.config_dict()}, indent=2, default=str)
        )
        return CachedLatents(tuple(ids), latents)

    def get_or_encode(
        self, shard_path: str | os.PathLike, sample_ids: Iterable[str] | None = None
    ) -> CachedLatents:
        ids = None if sample_ids is None else list(sample_ids)
        return self.load(shard_path, ids) or self.encode_shard(shard_path)
