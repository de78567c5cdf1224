"""Episode filters: each check on one episode, video scores, fingerprints and the N:1 dedup."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from curation.config import FILTER_NAMES, FilterConfig
from curation.frames import decode_frames
from curation.stages.filters import (
    action_digest,
    check_episode,
    find_duplicates,
    fingerprint_to_hex,
    hamming,
    make_dedup_rejections,
    phash,
    to_gray,
    video_scores,
)
from schemas import FrameRef
from tests.curation.test_windowing import make_episode, make_frames

CFG = FilterConfig(min_steps=16, max_steps=500, max_abs_action=50.0, max_action_jump=10.0, min_sharpness=20.0)


def _with_frames(ep, fn):
    """``ep`` with every camera's frames replaced by ``fn(frames)``."""
    cams = {r: FrameRef(kind="inline", array=fn(ref.array), fps=ref.fps) for r, ref in ep.cameras.items()}
    return ep.with_(cameras=cams)


def _blur(frames, radius=3):
    return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in frames])


def test_good_episode_passes_with_scores_and_fingerprint():
    v = check_episode(make_episode(40), CFG)
    assert v.rejection is None
    assert set(v.quality) == {"motion", "brightness", "sharpness"}
    assert v.quality["motion"] > CFG.min_motion and v.quality["brightness"] > CFG.min_brightness
    assert v.quality["sharpness"] > CFG.min_sharpness
    assert len(v.fingerprint) == CFG.hash_frames + 1 and all(0 <= h < 2**64 for h in v.fingerprint)


def _nan_action(ep):
    a = ep.action.copy()
    a[5, 1] = np.nan
    return ep.with_(action=a)


def _inf_state(ep):
    s = ep.state.copy()
    s[3, 0] = np.inf
    return ep.with_(state=s)


def _frozen(ep):
    return ep.with_(action=np.repeat(ep.action[:1], ep.length, axis=0))


def _huge(ep):
    a = ep.action.copy()
    a[7, 2] = 1e3
    return ep.with_(action=a)


def _jump(ep):
    a = ep.action.copy()
    a[20:, 0] += 30.0  # stays below max_abs_action, one big step
    return ep.with_(action=a)


@pytest.mark.parametrize(
    "make, stage, reason, detail",
    [
        (lambda: make_episode(10), "filter.length", "too_short", "10 steps < min_steps 16"),
        (
            lambda: make_episode(501, with_cameras=False),
            "filter.length",
            "too_long",
            "501 steps > max_steps 500",
        ),
        (lambda: _nan_action(make_episode(40)), "filter.finite", "nonfinite_action", "first at step 5 dim 1"),
        (lambda: _inf_state(make_episode(40)), "filter.finite", "nonfinite_state", "first at step 3 dim 0"),
        (lambda: _frozen(make_episode(40)), "filter.frozen_actions", "frozen_actions", "std"),
        (lambda: _huge(make_episode(40)), "filter.exploding_actions", "action_out_of_bounds", "step 7 dim 2"),
        (lambda: _jump(make_episode(40)), "filter.exploding_actions", "action_jump", "at step 19 dim 0"),
        (
            lambda: _with_frames(make_episode(40), lambda f: np.repeat(f[:1], len(f), 0)),
            "filter.static_video",
            "static_video",
            "motion 0 <",
        ),
        (lambda: _with_frames(make_episode(40), _blur), "filter.blurred_video", "blurred_video", "sharpness"),
    ],
)
def test_each_filter_rejects_with_stage_and_reason(make, stage, reason, detail):
    ep = make()
    v = check_episode(ep, CFG)
    assert v.rejection is not None
    assert (v.rejection.stage, v.rejection.reason) == (stage, reason)
    assert detail in v.rejection.detail
    assert v.rejection.episode == ep.episode_id and v.rejection.path == ep.source_path
    v.rejection.validate()
    # with that filter disabled, the episode gets past it
    name = stage.split(".", 1)[1]
    off = FilterConfig(**{**CFG.__dict__, "enabled": tuple(n for n in FILTER_NAMES if n != name)})
    second = check_episode(ep, off).rejection
    assert second is None or second.stage != stage


def test_dark_video():
    ep = _with_frames(make_episode(40), lambda f: (f * 0.04).astype(np.uint8))
    v = check_episode(ep, FilterConfig(enabled=("dark_video",)))
    assert v.rejection.reason == "dark_video" and v.quality["brightness"] < 12
    assert check_episode(make_episode(40), FilterConfig(enabled=("dark_video",))).rejection is None


def test_scores_order_the_way_they_should():
    frames = make_frames(20)
    sharp, blurred = video_scores(frames, CFG), video_scores(_blur(frames, 2), CFG)
    assert blurred.sharpness < sharp.sharpness / 10
    assert video_scores(frames[:1].repeat(8, 0), CFG).motion == 0.0
    assert video_scores(frames // 4, CFG).brightness == pytest.approx(sharp.brightness / 4, rel=0.05)


def test_only_sampled_frames_are_decoded():
    calls = []

    def spy(ref, idx):
        calls.append(list(idx))
        return decode_frames(ref, idx)

    cfg = FilterConfig(sample_fps=4.0, max_sampled_frames=16, hash_frames=4)
    v = check_episode(make_episode(400, fps=20.0), cfg, decode=spy)
    assert v.rejection is None
    assert len(calls) == 1 and calls[0] == sorted(set(calls[0]))
    assert len(calls[0]) <= 16 + 4
    assert calls[0][0] == 0 and calls[0][-1] == 399


def test_episode_without_cameras_skips_video_checks():
    v = check_episode(make_episode(40, with_cameras=False), CFG)
    assert v.rejection is None and v.quality == {} and len(v.fingerprint) == 1


# ---- fingerprints and dedup -----------------------------------------------------------


def test_phash_is_stable_under_small_changes_and_differs_across_scenes():
    a = to_gray(make_frames(1, seed=1), 32)[0]
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 3, a.shape), 0, 255)
    other = to_gray(make_frames(1, seed=2), 32)[0]
    assert hamming(phash(a), phash(noisy)) <= 4
    assert hamming(phash(a), phash(other)) > 12
    act = make_episode(40, seed=1).action
    assert action_digest(act) == action_digest(act.astype(np.float64))  # a format conversion
    assert action_digest(act) != action_digest(act + 1e-3)
    assert action_digest(act) != action_digest(make_episode(40, seed=2).action)


def test_near_duplicate_episodes_are_found_and_smallest_id_kept():
    base = make_episode(40, seed=3, index=0)
    copy = make_episode(40, seed=3, index=1)  # same content, another id
    # a re-encoded copy: frames slightly off, the same actions
    noisy = _with_frames(
        make_episode(40, seed=3, index=2), lambda f: np.clip(f.astype(int) + 2, 0, 255).astype(np.uint8)
    )
    other = make_episode(40, seed=4, index=3)
    # the same scene with other actions is another demonstration, not a duplicate
    retake = make_episode(40, seed=3, index=4)
    retake = retake.with_(action=retake.action + np.float32(1e-2))
    eps = [base, copy, noisy, other, retake]
    verdicts = [check_episode(e, CFG) for e in eps]
    assert all(v.rejection is None for v in verdicts)
    # the fields of an episode's record (curation.episode_samples.process_episode) that dedup reads
    rows = [
        {"episode_id": e.episode_id, "source": e.source, "fingerprint": fingerprint_to_hex(v.fingerprint)}
        for e, v in zip(eps, verdicts, strict=True)
    ]
    group = sorted(e.episode_id for e in eps[:3])
    rejected = make_dedup_rejections(reversed(rows), CFG)
    assert sorted(r.episode for r in rejected) == group[1:]
    assert all(r.stage == "filter.duplicate" and r.reason == "near_duplicate" for r in rejected)
    assert all(f"near-duplicate of episode {group[0]}" in r.detail for r in rejected)


def _brute_force(items, d):
    kept, out = [], {}
    for i, fp in sorted(items):
        for k, kfp in kept:
            if len(kfp) == len(fp) and max(hamming(x, y) for x, y in zip(fp, kfp, strict=True)) <= d:
                out[i] = k
                break
        else:
            kept.append((i, fp))
    return out


def test_find_duplicates_matches_brute_force_and_ignores_order():
    rng = random.Random(0)
    items = []
    for g in range(40):
        root = (rng.getrandbits(64), rng.getrandbits(64))
        for j in range(rng.randint(1, 4)):
            fp = tuple(h ^ sum(1 << rng.randrange(64) for _ in range(rng.randint(0, 4))) for h in root)
            items.append((f"ep{g:03d}-{j}", fp))
    items.append(("single-component", (rng.getrandbits(64),)))
    for d in (0, 2, 4, 6):
        want = _brute_force(items, d)
        got = find_duplicates(items, d)
        assert {k: v[0] for k, v in got.items()} == want
        for _ in range(3):
            shuffled = items[:]
            rng.shuffle(shuffled)
            assert find_duplicates(shuffled, d) == got
    assert find_duplicates(items, 4)  # the groups above do produce duplicates


def test_find_duplicates_threshold_is_inclusive():
    a = 0x0123456789ABCDEF
    for flips, dup in ((3, True), (4, True), (5, False)):
        b = a ^ sum(1 << i for i in range(0, 64, 64 // 5)[:flips])
        got = find_duplicates([("a", (a,)), ("b", (b,))], 4)
        assert (got == {"b": ("a", flips)}) is dup
    with pytest.raises(ValueError, match="appears more than once"):
        find_duplicates([("a", (1,)), ("a", (2,))], 4)
