"""Episode filters (ARCHITECTURE.md, "Curation stages"): 1:1 or 1:0 into the ledger, plus N:1 dedup.

Every check is a pure function returning ``None`` (pass) or a :class:`schemas.Rejection`
with stage ``filter.<name>`` and a reason code; thresholds live in :class:`FilterConfig`.
:func:`check_episode` runs the enabled checks cheapest first, so frames are decoded only
for episodes whose numbers are sound:

==================  =====================  ==================================================
filter              reason                 rejects when
==================  =====================  ==================================================
length              too_short / too_long   T outside [min_steps, max_steps]
finite              nonfinite_state/action any NaN or inf
frozen_actions      frozen_actions         std over time < frozen_action_std on every dim
exploding_actions   action_out_of_bounds   any |a| > max_abs_action
                    action_jump            any |a[t+1] − a[t]| > max_action_jump
static_video        static_video           motion < min_motion
exposure            overexposed            fraction of pixels >= saturated_level > max_overexposed_fraction
                    underexposed           fraction of pixels <= black_level > max_underexposed_fraction
dark_video          dark_video             brightness < min_brightness
blurred_video       blurred_video          sharpness < min_sharpness
duplicate           near_duplicate         fingerprint within max_hamming of a kept episode
==================  =====================  ==================================================

Video scores come from one camera (``quality_camera``; ``auto`` = high, side, low, else
the first) on frames sampled at ``sample_fps`` (at most ``max_sampled_frames``), decoded
by index only, converted to grayscale and resized (antialiased) to small squares:

* motion     = mean |g[i+1] − g[i]| over consecutive sampled frames at analysis_size²
  (gray levels 0..255 per sampling interval);
* brightness = mean gray level at analysis_size²;
* overexposed / underexposed = fraction of gray pixels >= saturated_level / <= black_level over
  all sampled frames, on the sharpness-sized gray frames (a 32² box average would wash small
  clipped areas into their neighbours); luma, so one saturated channel (pure red) is not
  over-exposure;
* sharpness  = mean over frames of the variance of the 4-neighbour Laplacian at
  s² with s = min(sharpness_size, frame height, frame width) (blur below ~3 px is invisible
  at 32², hence the larger size; never upscaled, as interpolation itself blurs).

Action-free video (:mod:`schemas.episode`) has no actions to judge: ``frozen_actions`` and
``exploding_actions`` skip it (the verdict lists them in ``skipped``, reason ``no_actions``,
which the episode's record keeps), and its fingerprint's action digest is that of an empty
trajectory, so two action-free episodes are duplicates by their frames alone.

They are returned as quality scores for :attr:`schemas.Sample.quality`. An episode without
cameras (state-only data) skips the video checks and is fingerprinted by its actions only.

Near duplicates: an episode's *fingerprint* is a tuple of 64-bit hashes — one DCT pHash
per frame at ``hash_frames`` evenly spaced positions (8×8 low-frequency block of the
analysis_size² DCT, bit = coefficient above the block's AC median) and one 64-bit digest
of the actions rounded to 1e-4 (a copy survives any format conversion; a different
demonstration does not). Two episodes are duplicates when every frame component is within
``max_hamming`` bits and the action digests are within ``max_action_hamming`` (default 0:
equal). Scripted demonstrations of one task share their frames' look *and* the shape of
their action trajectories, so neither a pHash nor a SimHash of the actions tells them apart
(measured on 120 Meta-World expert episodes: a 64-bit action SimHash called 54 distinct
demonstrations duplicates even at distance 0). :func:`find_duplicates` is the pure N:1 core: it walks episode ids in
sorted order and keeps an episode unless it is a duplicate of an already kept one, so the
smallest id of a group is kept and the result does not depend on input order. Candidate
pairs come from pigeonhole banding of the first component (a pair within d bits agrees
exactly on one of d+1 bands), so it is near-linear in N.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from curation.config import FilterConfig
from schemas import Episode, FrameRef, Rejection
from schemas.compose import TOP_ROLES

FrameDecoder = Callable[[FrameRef, Sequence[int]], np.ndarray]
HASH_BITS = 64


def _reject(ep: Episode, name: str, reason: str, detail: str) -> Rejection:
    return Rejection(
        stage=f"filter.{name}",
        reason=reason,
        path=ep.source_path or ep.source,
        episode=ep.episode_id,
        detail=detail,
        source=ep.source,
    )


# ---- numeric checks -------------------------------------------------------------------


def check_length(ep: Episode, cfg: FilterConfig) -> Rejection | None:
    if ep.length < cfg.min_steps:
        return _reject(ep, "length", "too_short", f"{ep.length} steps < min_steps {cfg.min_steps}")
    if ep.length > cfg.max_steps:
        return _reject(ep, "length", "too_long", f"{ep.length} steps > max_steps {cfg.max_steps}")
    return None


def check_finite(ep: Episode, cfg: FilterConfig) -> Rejection | None:
    for name, x in (("state", ep.state), ("action", ep.action)):
        bad = ~np.isfinite(x)
        if bad.any():
            t, d = np.argwhere(bad)[0]
            return _reject(
                ep,
                "finite",
                f"nonfinite_{name}",
                f"{int(bad.sum())} NaN/inf {name} value(s), first at step {t} dim {d}",
            )
    return None


def check_frozen_actions(ep: Episode, cfg: FilterConfig) -> Rejection | None:
    std = ep.action.astype(np.float64).std(axis=0)
    if (std < cfg.frozen_action_std).all():
        return _reject(
            ep,
            "frozen_actions",
            "frozen_actions",
            f"action std over time max {std.max():.3g} < {cfg.frozen_action_std:g}",
        )
    return None


def check_exploding_actions(ep: Episode, cfg: FilterConfig) -> Rejection | None:
    a = ep.action.astype(np.float64)
    peak = np.abs(a).max(initial=0.0)
    if peak > cfg.max_abs_action:
        t, d = np.argwhere(np.abs(a) == peak)[0]
        return _reject(
            ep,
            "exploding_actions",
            "action_out_of_bounds",
            f"|action| = {peak:.4g} at step {t} dim {d} > max_abs_action {cfg.max_abs_action:g}",
        )
    if a.shape[0] > 1:
        jumps = np.abs(np.diff(a, axis=0))
        big = jumps.max(initial=0.0)
        if big > cfg.max_action_jump:
            t, d = np.argwhere(jumps == big)[0]
            return _reject(
                ep,
                "exploding_actions",
                "action_jump",
                f"|a[t+1] - a[t]| = {big:.4g} at step {t} dim {d} > max_action_jump {cfg.max_action_jump:g}",
            )
    return None


# ---- video scores ---------------------------------------------------------------------


@dataclass(frozen=True)
class VideoScores:
    motion: float
    brightness: float
    sharpness: float
    # not quality columns of the shards: the exposure check's inputs only
    overexposed: float = 0.0
    underexposed: float = 0.0

    def as_quality(self) -> dict[str, float]:
        return {"motion": self.motion, "brightness": self.brightness, "sharpness": self.sharpness}


def to_gray(frames_NHWC: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[N, size, size]`` grayscale (ITU-R 601 luma), antialiased resize."""
    out = np.empty((frames_NHWC.shape[0], size, size), np.float32)
    for i, frame in enumerate(frames_NHWC):
        im = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
        if im.size != (size, size):
            im = im.resize(
                (size, size), Image.Resampling.BOX if min(im.size) >= size else Image.Resampling.BILINEAR
            )
        out[i] = np.asarray(im, dtype=np.float32)
    return out


def motion_score(gray_NHW: np.ndarray) -> float:
    if gray_NHW.shape[0] < 2:
        return 0.0
    return float(np.abs(np.diff(gray_NHW, axis=0)).mean())


def laplacian_variance(gray_NHW: np.ndarray) -> float:
    g = gray_NHW.astype(np.float64)
    lap = g[:, 1:-1, :-2] + g[:, 1:-1, 2:] + g[:, :-2, 1:-1] + g[:, 2:, 1:-1] - 4 * g[:, 1:-1, 1:-1]
    return float(lap.reshape(lap.shape[0], -1).var(axis=1).mean())


def video_scores(frames_NHWC: np.ndarray, cfg: FilterConfig) -> VideoScores:
    small = to_gray(frames_NHWC, cfg.analysis_size)
    # never upscale for sharpness: interpolation itself would look like blur
    sharp = to_gray(frames_NHWC, max(8, min(cfg.sharpness_size, *frames_NHWC.shape[1:3])))
    return VideoScores(
        motion=motion_score(small),
        brightness=float(small.mean()),
        sharpness=laplacian_variance(sharp),
        overexposed=float((sharp >= cfg.saturated_level).mean()) if sharp.size else 0.0,
        underexposed=float((sharp <= cfg.black_level).mean()) if sharp.size else 0.0,
    )


def _below(
    ep: Episode, name: str, score: str, value: float, floor_name: str, floor: float
) -> Rejection | None:
    """Filter ``name`` (also its reason) rejects ``ep`` when the video ``score`` is below its floor."""
    if value < floor:
        return _reject(ep, name, name, f"{score} {value:.3g} < {floor_name} {floor:g}")
    return None


def check_static_video(ep: Episode, scores: VideoScores, cfg: FilterConfig) -> Rejection | None:
    return _below(ep, "static_video", "motion", scores.motion, "min_motion", cfg.min_motion)


def check_exposure(ep: Episode, scores: VideoScores, cfg: FilterConfig) -> Rejection | None:
    if scores.overexposed > cfg.max_overexposed_fraction:
        return _reject(
            ep,
            "exposure",
            "overexposed",
            f"{scores.overexposed:.3f} of sampled pixels >= {cfg.saturated_level} "
            f"> max_overexposed_fraction {cfg.max_overexposed_fraction:g}",
        )
    if scores.underexposed > cfg.max_underexposed_fraction:
        return _reject(
            ep,
            "exposure",
            "underexposed",
            f"{scores.underexposed:.3f} of sampled pixels <= {cfg.black_level} "
            f"> max_underexposed_fraction {cfg.max_underexposed_fraction:g}",
        )
    return None


def check_dark_video(ep: Episode, scores: VideoScores, cfg: FilterConfig) -> Rejection | None:
    return _below(ep, "dark_video", "brightness", scores.brightness, "min_brightness", cfg.min_brightness)


def check_blurred_video(ep: Episode, scores: VideoScores, cfg: FilterConfig) -> Rejection | None:
    sharpness = "sharpness (Laplacian variance)"
    return _below(ep, "blurred_video", sharpness, scores.sharpness, "min_sharpness", cfg.min_sharpness)


# ---- fingerprints -------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``[n, n]``: ``C @ x`` transforms a length-n signal."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).reshape(-1)).tobytes(), "big")


def phash(gray_HW: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a square grayscale image (side >= 8)."""
    n = gray_HW.shape[0]
    if gray_HW.shape != (n, n) or n < 8:
        raise ValueError(f"phash needs a square image of side >= 8, got {gray_HW.shape}")
    c = _dct_matrix(n)
    block = (c @ gray_HW.astype(np.float64) @ c.T)[:8, :8].reshape(-1)
    return _bits_to_int(block > np.median(block[1:]))


def action_digest(action_TDa: np.ndarray) -> int:
    """64-bit digest of the action trajectory rounded to 1e-4 (equal for copies of an episode)."""
    a = np.round(np.asarray(action_TDa, dtype=np.float64), 4) + 0.0  # + 0.0: no negative zeros
    h = hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).digest()
    return int.from_bytes(h[:8], "little")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def hash_frame_indices(length: int, cfg: FilterConfig) -> list[int]:
    n = min(cfg.hash_frames, length)
    return sorted({round(x) for x in np.linspace(0, length - 1, n)}) if length else []


def quality_frame_indices(length: int, fps: float, cfg: FilterConfig) -> list[int]:
    step = max(1, round(fps / cfg.sample_fps))
    idx = np.arange(0, length, step)
    if idx.size > cfg.max_sampled_frames:
        idx = np.unique(np.round(np.linspace(0, length - 1, cfg.max_sampled_frames)).astype(np.int64))
    return idx.tolist()


def quality_camera(ep: Episode, cfg: FilterConfig) -> str | None:
    if not ep.cameras:
        return None
    if cfg.quality_camera != "auto":
        if cfg.quality_camera not in ep.cameras:
            raise ValueError(
                f"FilterConfig.quality_camera {cfg.quality_camera!r} not among the cameras of episode "
                f"{ep.episode_id}: {sorted(ep.cameras)}"
            )
        return cfg.quality_camera
    return next((r for r in TOP_ROLES if r in ep.cameras), next(iter(ep.cameras)))


def fingerprint(ep: Episode, hash_gray_NHW: np.ndarray | None) -> tuple[int, ...]:
    """``(frame pHashes..., action digest)`` of an episode."""
    frames = () if hash_gray_NHW is None else tuple(phash(g) for g in hash_gray_NHW)
    return (*frames, action_digest(ep.action))


def find_duplicates(
    items: Iterable[tuple[str, Sequence[int]]], max_hamming: int, max_action_hamming: int | None = None
) -> dict[str, tuple[str, int]]:
    """``{duplicate id: (kept id, max component distance)}`` over ``(episode id, fingerprint)``.

    Deterministic and independent of input order: ids are visited in sorted order and an
    episode is kept unless some already kept episode with a fingerprint of the same length
    is within ``max_hamming`` bits on every frame component and within ``max_action_hamming``
    bits on the last (action) component (``None``: the same ``max_hamming``); then it maps to
    the smallest such id. Frames of one simulated task look alike from episode to episode, so
    the action signature is what tells two demonstrations apart; a copy of an episode (even
    re-encoded in another format) has the same actions.
    """
    action_limit = max_hamming if max_action_hamming is None else max_action_hamming
    ordered = sorted((str(i), tuple(int(h) for h in fp)) for i, fp in items)
    ids = [i for i, _ in ordered]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"find_duplicates: episode id {dup!r} appears more than once")
    bands = max_hamming + 1
    edges = np.linspace(0, HASH_BITS, bands + 1).astype(int)
    masks = [(((1 << (hi - lo)) - 1) << lo, lo) for lo, hi in itertools.pairwise(edges.tolist())]
    buckets: dict[tuple[int, int, int], list[int]] = defaultdict(list)  # (len, band, value) -> kept
    kept: list[tuple[str, tuple[int, ...]]] = []
    out: dict[str, tuple[str, int]] = {}
    for ep_id, fp in ordered:
        if not fp:
            raise ValueError(f"find_duplicates: episode {ep_id!r} has an empty fingerprint")
        keys = [(len(fp), b, (fp[0] & m) >> lo) for b, (m, lo) in enumerate(masks)]
        candidates = sorted({k for key in keys for k in buckets.get(key, ())})
        match = None
        for k in candidates:  # kept indices ascend with ids, so the first match is the smallest id
            dists = [hamming(x, y) for x, y in zip(fp, kept[k][1], strict=True)]
            dist = max(dists)
            if max(dists[:-1], default=0) <= max_hamming and dists[-1] <= action_limit:
                match = (kept[k][0], dist)
                break
        if match is not None:
            out[ep_id] = match
            continue
        for key in keys:
            buckets[key].append(len(kept))
        kept.append((ep_id, fp))
    return out


def duplicate_rejection(
    episode_id: str, kept_id: str, distance: int, path: str, source: str = ""
) -> Rejection:
    return Rejection(
        stage="filter.duplicate",
        reason="near_duplicate",
        path=path or source,
        episode=episode_id,
        detail=f"near-duplicate of episode {kept_id} (fingerprint distance {distance} bits)",
        source=source,
    )


def fingerprint_to_hex(fp: Sequence[int]) -> list[str]:
    return [f"{h:016x}" for h in fp]


def fingerprint_from_hex(fp: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(h, 16) for h in fp)


# ---- the stage ----------------------------------------------------------------------


@dataclass(frozen=True)
class FilterVerdict:
    rejection: Rejection | None
    quality: dict[str, float] = field(default_factory=dict)
    fingerprint: tuple[int, ...] = ()  # empty when the episode was rejected before hashing
    skipped: tuple[str, ...] = ()  # enabled checks that did not apply (ACTION_CHECKS on action-free video)


NUMERIC_CHECKS = (
    ("length", check_length),
    ("finite", check_finite),
    ("frozen_actions", check_frozen_actions),
    ("exploding_actions", check_exploding_actions),
)
# checks of the actions alone: they do not apply to action-free video (reason "no_actions")
ACTION_CHECKS = frozenset({"frozen_actions", "exploding_actions"})
VIDEO_CHECKS = (
    ("static_video", check_static_video),
    ("exposure", check_exposure),
    ("dark_video", check_dark_video),
    ("blurred_video", check_blurred_video),
)


def check_episode(ep: Episode, cfg: FilterConfig, decode: FrameDecoder | None = None) -> FilterVerdict:
    """Run the enabled per-episode checks; the fingerprint is for :func:`find_duplicates`."""
    enabled = set(cfg.enabled)
    skipped = () if ep.has_action else tuple(sorted(enabled & ACTION_CHECKS))
    for name, check in NUMERIC_CHECKS:
        if name in enabled and name not in skipped and (rej := check(ep, cfg)) is not None:
            return FilterVerdict(rej, skipped=skipped)
    role = quality_camera(ep, cfg)
    want_video = bool(enabled & {n for n, _ in VIDEO_CHECKS})
    want_hash = "duplicate" in enabled
    if role is None or not (want_video or want_hash):
        return FilterVerdict(None, {}, fingerprint(ep, None) if want_hash else (), skipped)
    if decode is None:
        from curation.frames import decode_frames as decode
    q_idx = quality_frame_indices(ep.length, ep.fps, cfg) if want_video else []
    h_idx = hash_frame_indices(ep.length, cfg) if want_hash else []
    idx = sorted(set(q_idx) | set(h_idx))
    frames = decode(ep.cameras[role], idx)
    pos = {t: i for i, t in enumerate(idx)}
    quality: dict[str, float] = {}
    if want_video:
        scores = video_scores(frames[[pos[t] for t in q_idx]], cfg)
        quality = scores.as_quality()
        for name, check in VIDEO_CHECKS:
            if name in enabled and (rej := check(ep, scores, cfg)) is not None:
                return FilterVerdict(rej, quality, skipped=skipped)
    fp = fingerprint(ep, to_gray(frames[[pos[t] for t in h_idx]], cfg.analysis_size)) if want_hash else ()
    return FilterVerdict(None, quality, fp, skipped)


def make_dedup_rejections(rows: Iterable[dict[str, Any]], cfg: FilterConfig) -> list[Rejection]:
    """N:1 duplicate stage over passing episode rows (``episode_id``, ``fingerprint``,
    ``source_path``, ``source``): the rejections of every near-duplicate, sorted by id.
    Drop the rejected ids from the dataset afterwards."""
    info: dict[str, tuple[str, str]] = {}
    items = []
    for r in rows:
        if not r.get("fingerprint"):
            continue
        info[r["episode_id"]] = (r.get("source_path") or "", r.get("source") or "")
        items.append((r["episode_id"], fingerprint_from_hex(r["fingerprint"])))
    dups = find_duplicates(items, cfg.max_hamming, cfg.max_action_hamming)
    return [duplicate_rejection(i, kept, d, *info[i]) for i, (kept, d) in sorted(dups.items())]
