"""Write a small dataset with LeRobot's own writer and dump what LeRobot reads back.

Runs in the lerobot venv (scripts/check_lerobot_native.sh), never in the project's .venv:

    python scripts/lerobot_native_helper.py OUT_DIR

writes ``OUT_DIR/dataset`` (``LeRobotDataset.create`` + ``add_frame`` + ``save_episode``:
2 episodes, cameras ``observation.images.top`` and ``observation.images.wrist``, LeRobot's
default codec, ``robot_type`` set to a robot no registry knows, no gwp_source.json) and
``OUT_DIR/expected/``: per episode ``action_<e>.npy`` [T, A], ``state_<e>.npy`` [T, S] and
``<camera>_<e>.npy`` uint8 [T, H, W, 3], each as ``LeRobotDataset.__getitem__`` returns it
(frames come back as float in [0, 1]; LeRobot divides the decoded uint8 by 255, so x255 and
rounding recovers the decoded pixels exactly). The project side then ingests the dataset with
no mapping and compares (scripts/check_lerobot_native.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

ROBOT_TYPE = "gwp_native_check_arm"  # not a registered embodiment: the reader must generate one
FPS = 10
HEIGHT, WIDTH = 64, 96  # SVT-AV1 wants frames of at least 64 px per side
EPISODE_LENGTHS = (12, 9)
JOINTS = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "gripper.pos"]
CAMERAS = ("top", "wrist")


def frame_image(episode: int, t: int, camera: int) -> np.ndarray:
    """A smooth moving pattern (a codec keeps it close, so frames differ per step and camera)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    phase = 0.4 * t + 1.3 * episode + 2.1 * camera
    r = 127 + 100 * np.sin(x / 9.0 + phase)
    g = 127 + 100 * np.cos(y / 7.0 - phase)
    b = 127 + 100 * np.sin((x + y) / 13.0 + 0.5 * phase)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def write(root: Path) -> LeRobotDataset:
    names = list(JOINTS)
    features = {
        "observation.state": {"dtype": "float32", "shape": (len(names),), "names": names},
        "action": {"dtype": "float32", "shape": (len(names),), "names": names},
        **{
            f"observation.images.{cam}": {
                "dtype": "video",
                "shape": (HEIGHT, WIDTH, 3),
                "names": ["height", "width", "channels"],
            }
            for cam in CAMERAS
        },
    }
    ds = LeRobotDataset.create(
        repo_id="local/gwp_native_check", fps=FPS, features=features, root=root, robot_type=ROBOT_TYPE
    )
    rng = np.random.default_rng(0)
    for e, length in enumerate(EPISODE_LENGTHS):
        for t in range(length):
            frame = {
                "observation.state": rng.normal(size=len(names)).astype(np.float32),
                "action": rng.normal(size=len(names)).astype(np.float32),
                "task": f"native check task {e}",
            }
            for c, cam in enumerate(CAMERAS):
                frame[f"observation.images.{cam}"] = frame_image(e, t, c)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return ds


def dump(root: Path, out: Path) -> None:
    ds = LeRobotDataset("local/gwp_native_check", root=root)
    out.mkdir(parents=True, exist_ok=True)
    per_episode: dict[int, dict[str, list[np.ndarray]]] = {}
    for i in range(len(ds)):
        item = ds[i]
        e = int(item["episode_index"])
        rows = per_episode.setdefault(e, {})
        rows.setdefault("action", []).append(item["action"].numpy())
        rows.setdefault("state", []).append(item["observation.state"].numpy())
        for cam in CAMERAS:
            chw = item[f"observation.images.{cam}"]  # float [3, H, W] in [0, 1]
            hwc = torch.round(chw * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            rows.setdefault(cam, []).append(hwc)
    for e, rows in per_episode.items():
        for key, values in rows.items():
            np.save(out / f"{key}_{e}.npy", np.stack(values))
    summary = {
        "codebase_version": ds.meta.info["codebase_version"],
        "robot_type": ds.meta.info["robot_type"],
        "episodes": sorted(per_episode),
        "video_codec": {
            cam: ds.meta.info["features"][f"observation.images.{cam}"]["info"]["video.codec"]
            for cam in CAMERAS
        },
        "video_backend": ds.video_backend,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: lerobot_native_helper.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    write(out / "dataset")
    dump(out / "dataset", out / "expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
