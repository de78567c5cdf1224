"""Raw videos + JSON/CSV sidecars: write synthetic episodes, read them back, and bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from curation.formats.mapping import SIDECAR_NAME, SourceMapping
from curation.formats.raw_video import RawVideoReader, write_raw_video
from curation.frames import decode_frames
from curation.video import encode_video, probe_video
from schemas import SchemaError
from schemas.errors import LoadError
from tests.curation.formats.test_hdf5_formats import (
    assert_same_episode,
    load_all,
    make_episode,
    make_episodes,
    make_frames,
)


@pytest.mark.parametrize("sidecar", ["json", "csv"])
def test_raw_video_roundtrip(tmp_path: Path, sidecar: str) -> None:
    episodes = make_episodes("metaworld_sawyer")
    root = write_raw_video(episodes, tmp_path / f"raw_{sidecar}", sidecar=sidecar)
    names = sorted(p.name for p in root.iterdir())
    assert "episode_000000.high.mp4" in names and "episode_000002.wrist.mp4" in names
    assert ("episode_000001.csv" in names) == (sidecar == "csv")
    assert probe_video(root / "episode_000001.high.mp4").num_frames == 9
    assert RawVideoReader.detect(root)
    loaded = load_all(RawVideoReader(root))
    assert len(loaded) == 3
    for got, want in zip(loaded, episodes, strict=True):
        assert got.cameras["high"].kind == "video"
        assert_same_episode(got, want, exact_frames=False, min_psnr=30.0)
        np.testing.assert_array_equal(got.timestamps, want.timestamps)  # bit-exact through the sidecar


def test_raw_video_mixed_embodiments_without_mapping(tmp_path: Path) -> None:
    episodes = [make_episode("metaworld_sawyer", 4, 0), make_episode("aloha", 5, 1, hw=(32, 48))]
    root = write_raw_video(episodes, tmp_path / "mixed")
    (root / SIDECAR_NAME).unlink()  # sidecars describe themselves
    loaded = load_all(RawVideoReader(root))
    assert [e.embodiment for e in loaded] == ["metaworld_sawyer", "aloha"]
    for got, want in zip(loaded, episodes, strict=True):
        assert_same_episode(got, want, exact_frames=False)


def test_raw_video_hand_made_csv_with_instruction_column(tmp_path: Path) -> None:
    """A person's own folder: CSV only, camera keys named their way, mapping from the config."""
    root = tmp_path / "mine"
    root.mkdir()
    frames = make_frames(6, (32, 32), seed=3)
    encode_video(frames, root / "take1.front.mp4", fps=10.0)
    rng = np.random.default_rng(1)
    state, action = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    with (root / "take1.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "action.0",
                "action.1",
                "action.2",
                "action.3",
                "state.0",
                "state.1",
                "state.2",
                "state.3",
                "instruction",
            ]
        )
        for t in range(6):
            w.writerow(
                [
                    *map(repr, map(float, action[t])),
                    *map(repr, map(float, state[t])),
                    "stack the cups" if t == 0 else "",
                ]
            )
    mapping = SourceMapping(embodiment="metaworld_sawyer", cameras={"front": "high"}, extra={"fps": 10.0})
    ep = load_all(RawVideoReader(root, mapping=mapping, source="mine"))[0]
    assert ep.instruction == "stack the cups" and ep.fps == 10.0 and list(ep.cameras) == ["high"]
    np.testing.assert_array_equal(ep.state, state)
    np.testing.assert_array_equal(ep.action, action)
    np.testing.assert_allclose(ep.timestamps, np.arange(6) / 10.0)
    assert decode_frames(ep.cameras["high"]).shape == (6, 32, 32, 3)
    # Without a mapping and without an embodiment in any sidecar there is nothing to go on.
    with pytest.raises(SchemaError, match="no mapping"):
        RawVideoReader(root)


def test_raw_video_bad_episodes_are_rejected_one_by_one(tmp_path: Path) -> None:
    episodes = make_episodes("metaworld_sawyer", lengths=(4, 5, 6, 7, 8, 4))
    root = write_raw_video(episodes, tmp_path / "bad")
    (root / "episode_000000.wrist.mp4").unlink()  # missing video
    meta = json.loads((root / "episode_000001.json").read_text())
    meta["action"][2][0] = float("nan")
    (root / "episode_000001.json").write_text(json.dumps(meta))  # NaN action (json writes NaN)
    encode_video(
        make_frames(3, (64, 64), 0), root / "episode_000002.high.mp4", fps=80.0
    )  # 3 frames for 6 steps
    (root / "episode_000003.json").write_text("{not json")
    meta = json.loads((root / "episode_000004.json").read_text())
    meta["videos"]["elbow"] = meta["videos"].pop("wrist")
    (root / "episode_000004.json").write_text(json.dumps(meta))
    reader = RawVideoReader(root)
    outcomes = {}
    for ref in reader.list_episodes():
        try:
            outcomes[ref.index] = reader.load(ref)
        except LoadError as err:
            outcomes[ref.index] = err
    assert outcomes[0].reason == "missing_video" and "episode_000000.wrist.mp4" in str(outcomes[0])
    assert outcomes[1].reason == "nan_action" and "episode_000001.json" in str(outcomes[1])
    assert outcomes[2].reason == "length_mismatch" and "episode_000002" in str(outcomes[2])
    assert outcomes[3].reason == "bad_sidecar"
    assert outcomes[4].reason == "unknown_camera" and "elbow" in str(outcomes[4])
    assert_same_episode(outcomes[5], episodes[5], exact_frames=False)


def test_raw_video_csv_nan_and_empty_folder(tmp_path: Path) -> None:
    episodes = make_episodes("metaworld_sawyer", lengths=(4,), hw=(16, 16))
    root = write_raw_video(episodes, tmp_path / "csvnan", sidecar="csv")
    table = (root / "episode_000000.csv").read_text().splitlines()
    cells = table[2].split(",")
    cells[-1] = "nan"
    table[2] = ",".join(cells)
    (root / "episode_000000.csv").write_text("\n".join(table) + "\n")
    reader = RawVideoReader(root)
    with pytest.raises(LoadError) as err:
        reader.load(reader.list_episodes()[0])
    assert err.value.reason == "nan_action"
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(root / SIDECAR_NAME, empty / SIDECAR_NAME)
    assert not RawVideoReader.detect(empty)
    with pytest.raises(LoadError) as err:
        RawVideoReader(empty).list_episodes()
    assert err.value.reason == "unknown_layout"
