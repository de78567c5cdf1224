"""Typed curation config: frozen dataclasses, named presets and a strict file loader.

One :class:`CurationConfig` holds everything a curation run decides; its sections are

* :class:`FilterConfig` — episode filter thresholds (ARCHITECTURE.md, "Curation stages"),
* :class:`WindowConfig` — window geometry p (chunk), Δ (frame stride), K (future frames)
  and the stride between window starts (stage 4),
* :class:`VideoConfig`  — composed image size and how the 1+K frames are encoded (stage 5),
* :class:`NormConfig`   — quantile sketch size and normalisation guards (stages 7–8),
* :class:`ShardConfig`  — shard size and compression (stage 9),
* :class:`schemas.text.TextEncoderConfig` — which encoder gives the instructions' token states,
  stored once per unique instruction beside the shards (``hashed`` on the CPU presets, Wan's umT5
  for ``paper``).

Presets are plain functions' results kept in one :class:`schemas.registry.Registry` (openpi style): ``default``
(CPU-sized, 128×128 images), ``debug`` (tiny, for tests) and ``paper`` (the GWP geometry
p = 48, Δ = 12, K = 4 at 384×320). :func:`load_config` reads a JSON or TOML file whose
top level may name a ``preset`` to start from and override any section field; an unknown
key anywhere is an error naming the key and the allowed ones, never silently ignored (the
project's one loader, :func:`schemas.config.from_dict`). String choices are ``Literal`` types,
checked by that loader and by :func:`schemas.config.check_choices` when built in Python.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from schemas.compose import FitMode
from schemas.config import ConfigError, check_choices, from_dict
from schemas.normalize import NormConfig
from schemas.registry import Registry, UnknownNameError
from schemas.text import TextEncoderConfig

FILTER_NAMES = (
    "length",
    "finite",
    "frozen_actions",
    "exploding_actions",
    "static_video",
    "exposure",
    "dark_video",
    "blurred_video",
    "duplicate",
)
TailMode = Literal["drop", "pad"]
FrameFormat = Literal["png", "mp4"]
VideoCodec = Literal["h264", "av1", "mpeg4"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "none"]
TAIL_MODES: tuple[str, ...] = typing.get_args(TailMode)
FRAME_FORMATS: tuple[str, ...] = typing.get_args(FrameFormat)
VIDEO_CODECS: tuple[str, ...] = typing.get_args(VideoCodec)


def _check(ok: bool, where: str, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(where, name, problem)


@dataclass(frozen=True)
class FilterConfig:
    enabled: tuple[str, ...] = FILTER_NAMES
    # length, in control steps
    min_steps: int = 16
    max_steps: int = 100_000
    # frozen: std over time of every action dim below this
    frozen_action_std: float = 1e-6
    # exploding: any |a| above max_abs_action, or any |a[t+1] - a[t]| above max_action_jump
    # (absolute units of the raw action; generous defaults that catch corrupt rows, tune per robot)
    max_abs_action: float = 1e4
    max_action_jump: float = 1e3
    # video quality: low-res grayscale frames sampled at `sample_fps` (at most `max_sampled_frames`)
    quality_camera: str = "auto"  # a camera role, or "auto" = high, else the first present
    analysis_size: int = 32  # side of the square grayscale frame for motion, brightness and pHash
    sharpness_size: int = 96  # blur needs more pixels than 32² to be visible
    sample_fps: float = 4.0
    max_sampled_frames: int = 16
    min_motion: float = 0.3  # mean |Δ gray| between consecutive sampled frames, 0..255 scale
    min_brightness: float = 12.0  # mean gray level, 0..255
    min_sharpness: float = 4.0  # variance of the 4-neighbour Laplacian at sharpness_size², gray 0..255
    # exposure: fraction of sampled gray pixels >= saturated_level (or <= black_level) above the max
    saturated_level: int = 250
    black_level: int = 5
    max_overexposed_fraction: float = 0.5
    max_underexposed_fraction: float = 0.5
    # near duplicates: pHash of `hash_frames` evenly spaced frames + action SimHash
    hash_frames: int = 4
    max_hamming: int = 4  # duplicate when every 64-bit frame pHash differs in at most this many bits
    max_action_hamming: int = 0  # … and the action digests in at most this many (0: equal actions)

    def __post_init__(self) -> None:
        w = "FilterConfig"
        for name in self.enabled:
            _check(
                name in FILTER_NAMES, w, "enabled", f"unknown filter {name!r}; allowed: {list(FILTER_NAMES)}"
            )
        _check(1 <= self.min_steps <= self.max_steps, w, "min_steps", "need 1 <= min_steps <= max_steps")
        for name in ("frozen_action_std", "max_abs_action", "max_action_jump", "sample_fps"):
            _check(getattr(self, name) > 0, w, name, "must be positive")
        _check(self.analysis_size >= 8, w, "analysis_size", "must be >= 8 (pHash uses an 8×8 DCT block)")
        _check(self.sharpness_size >= 8, w, "sharpness_size", "must be >= 8")
        _check(self.max_sampled_frames >= 2, w, "max_sampled_frames", "must be >= 2 (motion needs a pair)")
        _check(self.hash_frames >= 1, w, "hash_frames", "must be >= 1")
        _check(
            0 <= self.black_level < self.saturated_level <= 255,
            w,
            "saturated_level",
            "need 0 <= black_level < saturated_level <= 255",
        )
        for name in ("max_overexposed_fraction", "max_underexposed_fraction"):
            _check(0 < getattr(self, name) <= 1, w, name, "must be in (0, 1]")
        _check(0 <= self.max_hamming < 32, w, "max_hamming", "must be in [0, 32)")
        _check(0 <= self.max_action_hamming < 32, w, "max_action_hamming", "must be in [0, 32)")


@dataclass(frozen=True)
class WindowConfig:
    chunk: int = 16  # p: actions a[t : t+p]
    frame_stride: int = 4  # Δ: future frames at t + kΔ
    num_future: int = 4  # K
    stride: int = 4  # steps between consecutive window starts
    # "drop": a window needing steps past the end is not made (counted as dropped);
    # "pad": it is made, the action chunk repeats the last action and frames past the end
    # repeat the last frame.
    tail: TailMode = "drop"

    def __post_init__(self) -> None:
        w = "WindowConfig"
        check_choices(self, w)
        for name in ("chunk", "frame_stride", "stride"):
            _check(getattr(self, name) >= 1, w, name, "must be >= 1")
        _check(self.num_future >= 0, w, "num_future", "must be >= 0")

    @property
    def span(self) -> int:
        """Steps a window needs from its start: max(p, KΔ + 1)."""
        return max(self.chunk, self.num_future * self.frame_stride + 1)


@dataclass(frozen=True)
class VideoConfig:
    width: int = 128
    height: int = 128
    fit: FitMode = "stretch"  # each view resized to its slot; "pad" keeps the aspect ratio (black bars)
    format: FrameFormat = "png"  # how a sample's 1+K composed frames are stored
    codec: VideoCodec = "h264"  # for format "mp4"
    crf: int | None = None

    def __post_init__(self) -> None:
        w = "VideoConfig"
        check_choices(self, w)
        for name in ("width", "height"):
            v = getattr(self, name)
            _check(v >= 4 and v % 2 == 0, w, name, f"must be even and >= 4 (halves + yuv420p), got {v}")


@dataclass(frozen=True)
class ShardConfig:
    target_bytes: int = 256 * 2**20
    max_rows: int = 50_000
    row_group_rows: int = 256
    compression: Compression = "zstd"

    def __post_init__(self) -> None:
        w = "ShardConfig"
        check_choices(self, w)
        for name in ("target_bytes", "max_rows", "row_group_rows"):
            _check(getattr(self, name) >= 1, w, name, "must be >= 1")


@dataclass(frozen=True)
class CaptionConfig:
    """CoCa captions / CLIP scores / text embeddings (the model: pretrain/text_encoder.py)."""

    model: str = field(default="coca_ViT-B-32", metadata={"help": "open_clip CoCa model name"})
    pretrained: str | None = field(
        default="mscoco_finetuned_laion2b_s13b_b90k",
        metadata={"help": "open_clip tag, local checkpoint, or 'none' (random init)"},
    )
    captions: bool = True  # write CoCa captions (the costly part on CPU)
    max_tokens: int = 24
    min_tokens: int = 3
    batch_size: int = 16
    num_cpus: float = 0.5  # per actor; fractional so the read tasks keep a CPU on a small machine
    device: str = "cpu"
    seed: int = 0  # for the random initialisation when pretrained is None


@dataclass(frozen=True)
class CurationConfig:
    name: str = "default"
    filters: FilterConfig = field(default_factory=FilterConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (recorded in the manifest); ``from_dict`` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "CurationConfig") -> CurationConfig:
        return from_dict(cls, data, where)

    def replace(self, **sections: Any) -> CurationConfig:
        return dataclasses.replace(self, **sections)


# ---- presets --------------------------------------------------------------------------

PRESETS: Registry[CurationConfig] = Registry("curation preset")


def register_preset(cfg: CurationConfig) -> CurationConfig:
    if cfg.name in PRESETS and PRESETS.get(cfg.name) != cfg:
        raise ConfigError("presets", cfg.name, "a different preset with this name is already registered")
    return PRESETS.register(cfg.name, cfg, replace=True)  # the same preset twice is harmless


register_preset(CurationConfig(name="default"))
register_preset(
    CurationConfig(
        name="debug",
        filters=FilterConfig(min_steps=8, max_sampled_frames=6),
        windows=WindowConfig(chunk=8, frame_stride=2, num_future=2, stride=4),
        video=VideoConfig(width=64, height=64),
        norm=NormConfig(sketch_k=256),
        shards=ShardConfig(target_bytes=4 * 2**20, max_rows=2_000, row_group_rows=64),
    )
)
register_preset(
    CurationConfig(
        name="paper",
        filters=FilterConfig(min_steps=60),
        windows=WindowConfig(chunk=48, frame_stride=12, num_future=4, stride=12),
        # lossless: the policy sees raw camera frames at inference, and H.264 in yuv420p stored them
        # 34-37 dB away from those, at any CRF (BENCHMARKS.md, "Stored sample frames"); PNG costs
        # about 18× the bytes per sample (a latent cache is the compact store for long runs)
        video=VideoConfig(width=384, height=320, format="png"),
        # the umT5-XXL encoder Wan2.2 was trained with, from its diffusers folder (4096-d states)
        text=TextEncoderConfig(kind="umt5", name="Wan-AI/Wan2.2-TI2V-5B-Diffusers", subfolder="text_encoder"),
    )
)


def list_presets() -> list[str]:
    return PRESETS.names()


def get_preset(name: str) -> CurationConfig:
    """The preset ``name``; an unknown one is a :class:`ConfigError` (it comes from a config file)
    carrying the registry's "did you mean" and the known names."""
    try:
        return PRESETS.get(name)
    except UnknownNameError as err:
        raise ConfigError("presets", "", str(err)) from None


# ---- strict loading -------------------------------------------------------------------


def preset_with_overrides(data: dict[str, Any], where: str = "config") -> CurationConfig:
    """Start from ``data["preset"]`` (default ``"default"``) and override the given fields."""
    data = dict(data)
    preset = data.pop("preset", None)
    base = get_preset(preset if preset is not None else "default")
    if preset is not None and "name" not in data:
        data["name"] = preset
    return from_dict(CurationConfig, data, where, base)


def load_config(path: str | Path) -> CurationConfig:
    """A config from a ``.json`` or ``.toml`` file (see :func:`preset_with_overrides`)."""
    return preset_with_overrides(read_config_file(path), where=str(Path(path)))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level table of a ``.json`` or ``.toml`` file; a file that is missing, unreadable,
    not parseable or not a table is a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:  # missing, a folder, unreadable, not text
        raise ConfigError(str(path), "<file>", f"cannot read: {err}") from err
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(str(path), "<file>", "expected a .json or .toml file")
    except (json.JSONDecodeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(path), "<file>", f"cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(str(path), "<file>", "top level must be an object/table")
    return data
