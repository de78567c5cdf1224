"""Reliability, timing and rotation: frames are chosen by presentation time and shown as displayed.

The corpus of ``tests/support/faults_timing.py`` (a variable-frame-rate video, three rotated videos,
an fps mismatch, timestamps that go backwards or repeat or miss the frames, duplicated
``episode_index`` listings in LeRobot v2.1 and v3.0, a v3.0 video span shorter than its data)
is read by :func:`curation.ingest.iter_episodes` with decoding, as a curation worker reads it,
and once by the Ray curation job itself (its manifest's ledger and stage counts). Every check is recorded with :class:`tests.support.faults.Recorder` (groups ``timing`` and
``pixels``) so that ``python -m benchmarks.reliability`` shows it in ``RELIABILITY.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.frames import decode_frames
from curation.ingest import iter_episodes
from curation.video import close_cursors, probe_video, read_video
from schemas import Episode, Rejection
from schemas.video import decode_video_bytes
from tests.support.faults import Recorder
from tests.support.faults_timing import VFR_PTS, build_timing_corpus, marker_numbers

REC = Recorder()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("timing")
    sources, faults, cases, listed = build_timing_corpus(root)
    items = list(iter_episodes([str(p) for p in sources.values()], decode=True))
    close_cursors()
    return {"sources": sources, "faults": faults, "cases": cases, "listed": listed, "items": items}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _episode(corpus, case) -> Episode:
    source = Path(case.video).parts[-5]  # <root>/<source>/videos/chunk-000/<key>/<file>
    hits = [
        it
        for it in corpus["items"]
        if isinstance(it, Episode) and it.source_index == case.episode_index and it.source == source
    ]
    assert len(hits) == 1, f"{case.name}: episode {case.episode_index} of {source} did not load once"
    return hits[0]


def test_every_timing_fault_is_ledgered_with_file_reason_and_episode(corpus):
    rejections = [it for it in corpus["items"] if isinstance(it, Rejection)]
    failures = []
    for fault in corpus["faults"]:
        hits = [
            r
            for r in rejections
            if r.path.endswith(fault.path)
            and r.reason in fault.reasons
            and fault.detail in r.detail
            and fault.episode in r.episode
        ]
        observed = "; ".join(
            f"{r.stage}/{r.reason} {Path(r.path).name}#{r.episode}: {r.detail[:110]}" for r in hits
        )
        if not observed:
            near = [r for r in rejections if r.path.endswith(fault.path)]
            observed = "no matching ledger entry; for that file: " + (
                "; ".join(f"{r.reason}#{r.episode}: {r.detail[:90]}" for r in near) or "none"
            )
        expected = f"ledger: {'/'.join(fault.reasons)}, {Path(fault.path).name}, {fault.episode}"
        ok = len(hits) == 1
        REC.add("timing", fault.name, fault.injected, expected, observed, ok)
        if not ok:
            failures.append(f"{fault.name}: {observed}")
    assert not failures, failures


def test_counts_balance(corpus):
    episodes = [it for it in corpus["items"] if isinstance(it, Episode)]
    rejections = [it for it in corpus["items"] if isinstance(it, Rejection)]
    n_faults, n_cases = len(corpus["faults"]), len(corpus["cases"])
    good = corpus["listed"] - n_faults  # the frame cases and two good episodes per source load
    ok = (
        corpus["listed"] == len(episodes) + len(rejections)
        and len(rejections) == n_faults
        and len(episodes) == good == n_cases + 4
    )
    REC.add(
        "timing",
        "counts balance",
        f"{corpus['listed']} episode listings in 2 LeRobot sources, {n_faults} faulty",
        "listed = loaded + rejected; one rejection per fault",
        f"{corpus['listed']} listed = {len(episodes)} loaded + {len(rejections)} rejected",
        ok,
    )
    assert ok, [f"{r.reason} {r.path}#{r.episode}: {r.detail}" for r in rejections]


def test_variable_frame_rate_frames_are_chosen_by_time(corpus):
    (case,) = [c for c in corpus["cases"] if c.group == "timing"]
    ep = _episode(corpus, case)
    ref = ep.cameras["high"].array  # decoded by the ingest worker path (decode=True)
    loaded = _episode_ref(case)
    paths = {
        "episode, decoded at ingest": marker_numbers(ref),
        "episode, decode_frames": marker_numbers(decode_frames(loaded)),
        "sparse frames [1, 6, 3]": marker_numbers(decode_frames(loaded, [1, 6, 3])),
        "whole file, read_video": marker_numbers(read_video(case.video)),
        "decode_video_bytes": marker_numbers(decode_video_bytes(Path(case.video).read_bytes())),
        "decode_video_bytes at the steps' times": marker_numbers(
            decode_video_bytes(Path(case.video).read_bytes(), times=np.arange(len(case.expected)) / 10)
        ),
    }
    want = {
        "episode, decoded at ingest": case.expected,
        "episode, decode_frames": case.expected,
        "sparse frames [1, 6, 3]": case.expected[[1, 6, 3]],
        "whole file, read_video": np.arange(len(VFR_PTS)),
        "decode_video_bytes": np.arange(len(VFR_PTS)),
        "decode_video_bytes at the steps' times": case.expected,
    }
    bad = {k: v.tolist() for k, v in paths.items() if not np.array_equal(v, want[k])}
    observed = "; ".join(f"{k}: {v.tolist()}" for k, v in paths.items())
    REC.add(
        "timing",
        case.name,
        case.injected,
        f"steps get frames {case.expected.tolist()} (by time, not 0..{len(case.expected) - 1} by position); "
        "the whole file in pts order",
        observed,
        not bad,
    )
    assert not bad, bad
    close_cursors()


def _episode_ref(case):
    """The high camera's reference of the case's episode, loaded again (not decoded)."""
    source = Path(case.video).parents[3]
    for item in iter_episodes([str(source)]):
        if isinstance(item, Episode) and item.source_index == case.episode_index:
            return item.cameras["high"]
    raise AssertionError(f"episode {case.episode_index} of {source} did not load")


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_is_displayed_alike_in_every_decode_path(corpus, rotation):
    (case,) = [c for c in corpus["cases"] if c.group == "pixels" and f"({rotation} " in c.name]
    expected = case.expected  # [T, H, W, 3] as displayed
    ep = _episode(corpus, case)
    ref = _episode_ref(case)
    info = probe_video(case.video)
    t = len(expected)
    got = {
        "decoded at ingest": ep.cameras["high"].array,
        "decode_frames": decode_frames(ref),
        "sparse [7, 2]": decode_frames(ref, [7, 2]),
        "packed-span cursor [3, 8)": read_video(case.video, 3, 8),
        "decode_video_bytes": decode_video_bytes(Path(case.video).read_bytes()),
    }
    want = {
        "decoded at ingest": expected,
        "decode_frames": expected,
        "sparse [7, 2]": expected[[7, 2]],
        "packed-span cursor [3, 8)": expected[3:8],
        "decode_video_bytes": expected,
    }
    # the opposite turn has the same shape: a decoder that turned the wrong way fails the margin
    wrong = np.rot90(expected, 2, axes=(1, 2))
    scores = {
        k: (psnr(v, want[k]), psnr(v, wrong[: len(v)] if k != "sparse [7, 2]" else wrong[[7, 2]]))
        for k, v in got.items()
    }
    ok_probe = (info.height, info.width) == expected.shape[1:3] and info.rotation == rotation
    bad = [k for k, (right, other) in scores.items() if not (right >= 30 and right > other + 10)]
    observed = f"probe W×H {info.width}×{info.height}, rotation {info.rotation}; " + "; ".join(
        f"{k}: {right:.0f} dB (wrong turn {other:.0f} dB)" for k, (right, other) in scores.items()
    )
    REC.add(
        "pixels",
        case.name,
        case.injected,
        f"probe W×H {expected.shape[2]}×{expected.shape[1]} (as displayed); every path's frames are the displayed "
        f"picture (>= 30 dB, 10 dB above the opposite turn); {t} frames",
        observed,
        ok_probe and not bad,
    )
    assert ok_probe and not bad, observed
    close_cursors()


def test_the_curation_job_ledgers_every_timing_fault_and_balances(corpus, ray_local, tmp_path):
    """The same corpus through the Ray curation job: each fault once in the manifest's ledger
    (same file and reason as a plain load), and in = out + rejected at every stage."""
    from curation.pipeline import job_from_dict, run

    job = {
        "sources": [str(p) for p in corpus["sources"].values()],
        "out": str(tmp_path / "ds"),
        # flat marker frames have no edges: no blur bar, or the VFR episode is filtered out
        "curation": {"preset": "debug", "filters": {"min_sharpness": 0.0}},
        "run": {"progress": False, "num_cpus": 2, "episodes_per_task": 2},
    }
    m = run(job_from_dict(job))
    c, sc = m.counts, m.stage_counts
    load_rej = [r for r in m.rejections if r.window < 0 and r.stage in ("load", "ingest")]
    missing = [
        f.name
        for f in corpus["faults"]
        if sum(
            r.path == f.path and r.reason in f.reasons and f.episode in r.episode and f.detail in r.detail
            for r in load_rej
        )
        != 1
    ]
    balanced = c["episodes_in"] == corpus["listed"] == c["episodes_with_samples"] + c["episodes_rejected"]
    balanced &= all(k["in"] == k["out"] + k["rejected"] for k in sc.values())
    ok = not missing and balanced and len(load_rej) == len(corpus["faults"])
    stages = ", ".join(f"{s} {k['in']}→{k['out']}+{k['rejected']}" for s, k in sc.items())
    REC.add(
        "timing",
        "curation job accounting",
        f"the timing corpus ({corpus['listed']} listings, {len(corpus['faults'])} faulty) curated by the Ray job",
        "each fault once in the manifest ledger; in = out + rejected at every stage",
        f"{len(load_rej)} load rejections, missing: {missing or 'none'}; {stages}",
        ok,
    )
    assert ok, (missing, c, sc, [(r.stage, r.reason, r.path, r.episode) for r in m.rejections])
