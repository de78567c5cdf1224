"""Compare our reading of a LeRobot-written dataset with LeRobot's own (the project's side).

    python scripts/check_lerobot_native.py OUT_DIR

``OUT_DIR`` is what scripts/lerobot_native_helper.py wrote in the lerobot venv: the dataset
(``OUT_DIR/dataset``, no gwp_source.json) and ``OUT_DIR/expected/*.npy``. The dataset is
ingested here twice: with no mapping (cameras, state, action and a generated embodiment come
from its own feature names), then with a hand-written gwp_source.json (removed afterwards).
Both times every episode's actions, states and decoded frames must equal what LeRobot
returned: exit 0 then, 1 on any difference (each printed), 2 on usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from curation.formats.mapping import SIDECAR_NAME
from curation.ingest import iter_episodes
from schemas import Episode, Rejection

# LeRobot camera name -> the role our conventions give it.
ROLES = {"top": "high", "wrist": "wrist"}


def compare(out: Path, how: str) -> list[str]:
    """Every difference between our episodes and LeRobot's dump, as lines (empty: identical)."""
    dataset, expected = out / "dataset", out / "expected"
    items = list(iter_episodes([str(dataset)], decode=True))
    problems = [f"rejected: {r.reason}: {r.detail}" for r in items if isinstance(r, Rejection)]
    episodes = sorted((e for e in items if isinstance(e, Episode)), key=lambda e: e.source_index)
    want = sorted(int(p.stem.split("_")[-1]) for p in expected.glob("action_*.npy"))
    if [e.source_index for e in episodes] != want:
        problems.append(f"episodes {[e.source_index for e in episodes]}, LeRobot read {want}")
    for ep in episodes:
        i = ep.source_index
        for name, ours in (("action", ep.action), ("state", ep.state)):
            theirs = np.load(expected / f"{name}_{i}.npy")
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                problems.append(f"episode {i} {name}: ours {ours.shape}, LeRobot's {theirs.shape}, not equal")
        for cam, role in ROLES.items():
            theirs = np.load(expected / f"{cam}_{i}.npy")
            ours = ep.cameras[role].array if role in ep.cameras else None
            if ours is None:
                problems.append(f"episode {i}: camera {cam} not read (roles {sorted(ep.cameras)})")
            elif ours.shape != theirs.shape:
                problems.append(f"episode {i} {cam}: frames {ours.shape}, LeRobot's {theirs.shape}")
            elif not np.array_equal(ours, theirs):
                diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
                problems.append(
                    f"episode {i} {cam}: {int((diff > 0).sum())} pixel values differ (max {int(diff.max())})"
                )
    summary = json.loads((expected / "summary.json").read_text())
    print(
        f"lerobot {summary['codebase_version']} dataset, robot_type {summary['robot_type']!r}, "
        f"codecs {summary['video_codec']}, LeRobot decoder {summary['video_backend']}: "
        f"{len(episodes)} episode(s), {sum(e.length for e in episodes)} frames read {how} "
        f"as embodiment {sorted({e.embodiment for e in episodes})}"
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0], "expected").is_dir():
        print("usage: check_lerobot_native.py OUT_DIR (written by lerobot_native_helper.py)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    sidecar = out / "dataset" / SIDECAR_NAME
    if sidecar.exists():
        print(f"{sidecar} exists: the first pass is about reading without one", file=sys.stderr)
        return 2
    problems = [f"no mapping: {p}" for p in compare(out, "with no mapping")]
    embodiment = json.loads((out / "expected" / "summary.json").read_text())["robot_type"]
    cameras = {f"observation.images.{cam}": role for cam, role in ROLES.items()}
    sidecar.write_text(json.dumps({"embodiment": embodiment, "cameras": cameras}))  # as a person writes it
    try:
        problems += [f"hand-written mapping: {p}" for p in compare(out, "with a hand-written mapping")]
    finally:
        sidecar.unlink()
    for line in problems:
        print(f"DIFFERENT: {line}")
    verdict = "actions, states and frames equal LeRobot's, with no mapping and with a hand-written one"
    print(f"lerobot-native: {verdict}" if not problems else "lerobot-native: FAIL")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
