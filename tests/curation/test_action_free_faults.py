"""Fault corpus of action-free video (rows of RELIABILITY.md, group "bad input").

A raw-video folder whose mapping says ``"actions": false`` (no step tables): two good episodes
and one fault per broken one, read through ingest; each fault must be one rejection naming the
file and the reason, the good ones must load without actions, and the count must balance
(inputs = episodes + rejections). Beside it, a folder that *expects* actions and has no step
tables (an action-free folder with the flag lost), and a mapping whose flag is not a boolean.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.formats.mapping import SIDECAR_NAME
from curation.formats.raw_video import write_raw_video
from curation.ingest import iter_episodes
from curation.video import encode_video
from schemas import Episode, Rejection
from tests.support.faults import Fault, Recorder
from tests.support.helpers import make_episodes

REC = Recorder()
GROUP = "bad input"
GOOD = 2
LENGTHS = (16, 18, 20, 20, 20, 20)


def _name(i: int) -> str:
    return f"episode_{i:06d}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Fault]]:
    root = tmp_path_factory.mktemp("action_free") / "video"
    episodes = [ep.without_actions() for ep in make_episodes(LENGTHS, seed=7, source="video")]
    write_raw_video(episodes, root)
    faults: list[Fault] = []
    i = GOOD
    encode_video(
        episodes[i].cameras["wrist"].array[:-4], root / f"{_name(i)}.wrist.mp4", fps=10.0, codec="h264"
    )
    faults.append(Fault("cameras disagree", "wrist mp4 re-encoded 4 frames short", f"{_name(i)}.json",
                        ("length_mismatch",), "camera wrist"))  # fmt: skip
    i += 1
    meta = json.loads((root / f"{_name(i)}.json").read_text())
    meta["timestamps"][3], meta["timestamps"][4] = meta["timestamps"][4], meta["timestamps"][3]
    (root / f"{_name(i)}.json").write_text(json.dumps(meta))
    faults.append(Fault("timestamps go backwards", "steps 3 and 4 swapped in the sidecar", f"{_name(i)}.json",
                        ("bad_timestamps",)))  # fmt: skip
    i += 1
    meta = json.loads((root / f"{_name(i)}.json").read_text())
    (root / f"{_name(i)}.json").write_text(json.dumps({**meta, "videos": {}}))
    faults.append(Fault("no video at all", "sidecar lists no video", f"{_name(i)}.json", ("missing_video",),
                        "no <name>.<camera>.mp4"))  # fmt: skip
    i += 1
    (root / f"{_name(i)}.high.mp4").unlink()
    faults.append(Fault("listed video missing", "high-camera mp4 deleted", f"{_name(i)}.json", ("missing_video",),
                        "does not exist"))  # fmt: skip
    assert i == len(LENGTHS) - 1
    return root, faults


def test_action_free_faults_are_each_one_rejection_and_the_count_balances(corpus):
    root, faults = corpus
    items = list(iter_episodes([root]))
    episodes = [x for x in items if isinstance(x, Episode)]
    rejections = [x for x in items if isinstance(x, Rejection)]
    for fault in faults:
        hits = [r for r in rejections if r.path.endswith(fault.path)]
        ok = len(hits) == 1 and hits[0].reason in fault.reasons and fault.detail in hits[0].detail
        observed = "; ".join(f"{r.reason}: {r.detail}" for r in hits) or "no rejection"
        REC.add(GROUP, f"action-free video: {fault.name}", fault.injected,
                f"one rejection {'/'.join(fault.reasons)} naming {fault.path}", observed, ok)  # fmt: skip
        assert ok, (fault, hits)
    good_ok = len(episodes) == GOOD and all(not ep.has_action for ep in episodes)
    balance = len(items) == len(LENGTHS) == len(episodes) + len(rejections)
    REC.add(GROUP, "action-free video: good episodes and the balance", f"{GOOD} good episodes beside the faults",
            f"{GOOD} episodes without actions; inputs = episodes + rejections",
            f"{len(episodes)} episodes, {len(rejections)} rejections of {len(LENGTHS)} inputs", good_ok and balance)  # fmt: skip
    assert good_ok and balance


def test_video_without_step_tables_is_refused_when_actions_are_expected(corpus, tmp_path):
    root, _ = corpus
    mapping = json.loads((root / SIDECAR_NAME).read_text())
    lost = tmp_path / "lost"
    write_raw_video([ep.without_actions() for ep in make_episodes((12, 14), source="lost")], lost)
    (lost / SIDECAR_NAME).write_text(json.dumps({**mapping, "actions": True}))
    items = list(iter_episodes([lost]))
    ok = len(items) == 2 and all(
        isinstance(r, Rejection) and r.reason == "bad_sidecar" and '"actions": false' in r.detail
        for r in items
    )
    REC.add(GROUP, "video with the actions flag lost", 'mapping says "actions": true, sidecars have no step table',
            "every episode one bad_sidecar rejection that points at the flag",
            "; ".join(f"{getattr(r, 'reason', 'loaded')}" for r in items), ok)  # fmt: skip
    assert ok, items


def test_an_actions_flag_that_is_not_a_boolean_is_refused_naming_the_mapping(tmp_path):
    bad = tmp_path / "bad"
    write_raw_video([ep.without_actions() for ep in make_episodes((12,), source="bad")], bad)
    mapping = json.loads((bad / SIDECAR_NAME).read_text())
    (bad / SIDECAR_NAME).write_text(json.dumps({**mapping, "actions": "no"}))
    items = list(iter_episodes([bad]))
    ok = (
        len(items) == 1
        and isinstance(items[0], Rejection)
        and "actions: must be true or false" in items[0].detail
        and SIDECAR_NAME in items[0].detail + items[0].path
    )
    REC.add(GROUP, "actions flag not a boolean", '"actions": "no" in gwp_source.json',
            "the source is one rejection naming the mapping file and the field",
            f"{items[0].reason}: {items[0].detail}" if items and isinstance(items[0], Rejection) else str(items), ok)  # fmt: skip
    assert ok, items
