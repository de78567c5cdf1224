"""The writing loop both LeRobot writers share (curation/formats/lerobot_write.py)."""

from __future__ import annotations

import dataclasses

import pytest

from curation.formats.lerobot_v2 import write_lerobot_v2
from curation.formats.lerobot_v3 import write_lerobot_v3
from schemas import FrameRef
from tests.curation.formats.test_lerobot_formats import make_episodes, smooth_frames


@pytest.mark.parametrize("write", [write_lerobot_v2, write_lerobot_v3])
def test_camera_frame_size_change_is_rejected_and_nothing_is_left(write, tmp_path):
    eps = make_episodes()
    last = eps[-1]
    small = FrameRef(kind="inline", array=smooth_frames(last.length, 0.0, h=32, w=48))
    eps[-1] = dataclasses.replace(last, cameras={**last.cameras, "wrist": small})
    with pytest.raises(
        ValueError,
        match=r"episode 2: observation\.images\.wrist frames are \(32, 48\), earlier ones \(64, 64\)",
    ):
        write(eps, tmp_path / "ds")
    assert not any((tmp_path / "ds" / sub).exists() for sub in ("meta", "data", "videos"))


@pytest.mark.parametrize("write", [write_lerobot_v2, write_lerobot_v3])
def test_a_second_write_into_a_dataset_is_refused(write, tmp_path):
    write(make_episodes()[:1], tmp_path / "ds")
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        write(make_episodes()[:1], tmp_path / "ds")
