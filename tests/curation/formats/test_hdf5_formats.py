"""robomimic and ACT/ALOHA HDF5: write synthetic episodes, read them back, and bad inputs.

Episodes are built here with inline frames (smooth gradients plus a moving square, so that
the lossy paths — JPEG here, h264 in the raw-video tests — have something realistic to code).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from curation.formats.hdf5_aloha import AlohaReader, write_aloha_hdf5
from curation.formats.hdf5_robomimic import RobomimicReader, write_robomimic_hdf5
from curation.formats.mapping import SourceMapping
from curation.frames import decode_frames
from schemas import Episode, FrameRef, episode_id_for, from_table, get_embodiment, to_table
from schemas.errors import LoadError

LENGTHS = (5, 9, 13)


def make_frames(length: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: a colour gradient with a soft-edged bright blob moving across it.

    Soft edges, like a rendered or camera image: yuv420p halves chroma resolution, so a
    one-pixel saturated colour edge alone would cap any codec near 29 dB at 64².
    """
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.stack(
        [xx / w * 200 + 20, yy / h * 180 + 30, np.full_like(xx, 60 + 5 * (seed % 20))], axis=-1
    )
    colour = np.array([230, 200 - 9 * (seed % 15), 50], np.float32)
    frames_THWC = np.empty((length, h, w, 3), np.uint8)
    for t in range(length):
        cy, cx = 6 + (2 * t + seed) % (h - 12), 6 + (3 * t) % (w - 12)
        dist = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
        alpha = np.clip((6.0 - dist) / 3.0, 0.0, 1.0)[..., None]  # 3-pixel ramp at the edge
        frames_THWC[t] = np.rint(background * (1 - alpha) + colour * alpha).astype(np.uint8)
    return frames_THWC


def make_episode(embodiment: str, length: int, index: int, hw: tuple[int, int] = (64, 64)) -> Episode:
    spec = get_embodiment(embodiment)
    rng = np.random.default_rng(100 + index)
    fps = float(spec.control_hz)
    cameras = {
        role: FrameRef(kind="inline", array=make_frames(length, hw, seed=index * 7 + k), fps=fps)
        for k, role in enumerate(spec.cameras)
    }
    return Episode(
        episode_id=episode_id_for("synthetic", f"ep{index}", index),
        source="synthetic",
        embodiment=spec.name,
        instruction=f"task {index}: push the puck to the goal",
        fps=fps,
        state=rng.normal(size=(length, spec.state_dim)).astype(np.float32),
        action=rng.uniform(-2, 2, size=(length, spec.action_dim)).astype(np.float32),
        timestamps=np.arange(length, dtype=np.float64) / fps,
        cameras=cameras,
    ).validate()


def make_episodes(embodiment: str, lengths=LENGTHS, hw: tuple[int, int] = (64, 64)) -> list[Episode]:
    return [make_episode(embodiment, n, i, hw) for i, n in enumerate(lengths)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_episode(
    got: Episode, want: Episode, *, exact_frames: bool = True, min_psnr: float = 30.0
) -> None:
    assert got.length == want.length
    assert got.embodiment == want.embodiment
    assert got.instruction == want.instruction
    assert got.fps == want.fps
    np.testing.assert_array_equal(got.state, want.state)
    np.testing.assert_array_equal(got.action, want.action)
    np.testing.assert_allclose(got.timestamps, want.timestamps, rtol=0, atol=1e-12)
    assert set(got.cameras) == set(want.cameras)
    for role, ref in got.cameras.items():
        frames = decode_frames(ref)
        expected = decode_frames(want.cameras[role])
        assert frames.shape == expected.shape, role
        if exact_frames:
            np.testing.assert_array_equal(frames, expected)
        else:
            assert psnr(frames, expected) >= min_psnr, (role, psnr(frames, expected))


def load_all(reader) -> list[Episode]:
    return [reader.load(ref) for ref in reader.list_episodes()]


# ---- robomimic ---------------------------------------------------------------------------


def test_robomimic_roundtrip_metaworld(tmp_path: Path) -> None:
    episodes = make_episodes("metaworld_sawyer")
    path = write_robomimic_hdf5(episodes, tmp_path / "mw.hdf5")
    assert RobomimicReader.detect(path)
    assert not AlohaReader.detect(path)
    reader = RobomimicReader(path)  # mapping from mw.hdf5.gwp_source.json
    refs = reader.list_episodes()
    assert [r.locator["demo"] for r in refs] == ["demo_0", "demo_1", "demo_2"]
    loaded = load_all(reader)
    for got, want in zip(loaded, episodes, strict=True):
        assert_same_episode(got, want)
        assert got.cameras["high"].kind == "hdf5"
        assert got.cameras["high"].key == f"data/demo_{got.source_index}/obs/agentview_image"
        assert got.cameras["wrist"].key.endswith("obs/robot0_eye_in_hand_image")
    assert len({ep.episode_id for ep in loaded}) == 3
    assert from_table(Episode, to_table(loaded)) == loaded  # hdf5 refs cross Ray workers as Arrow rows
    # Stable ids: a second reader gives the same ids.
    assert [e.episode_id for e in load_all(RobomimicReader(path))] == [e.episode_id for e in loaded]


def test_robomimic_file_layout_franka_and_filter_keys(tmp_path: Path) -> None:
    episodes = make_episodes("franka_robomimic", lengths=(4, 6, 3), hw=(32, 48))
    path = write_robomimic_hdf5(
        episodes, tmp_path / "lift.hdf5", compression="gzip", filter_keys={"train": [0, 2]}
    )
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert int(data.attrs["total"]) == 13
        assert json.loads(data.attrs["env_args"])["env_kwargs"]["control_freq"] == 20.0
        demo = data["demo_1"]
        assert int(demo.attrs["num_samples"]) == 6
        assert demo["obs/robot0_eef_pos"].shape == (6, 3)
        assert demo["obs/robot0_eef_quat"].shape == (6, 4)
        assert demo["obs/robot0_gripper_qpos"].shape == (6, 2)
        assert demo["obs/agentview_image"].shape == (6, 32, 48, 3)
        assert demo["obs/agentview_image"].dtype == np.uint8
        assert demo["obs/robot0_eye_in_hand_image"].compression == "gzip"
        assert demo["actions"].shape == (6, 7)
        assert demo["rewards"].shape == (6,) and demo["dones"][-1] == 1
        assert [m.decode() for m in f["mask/train"][()]] == ["demo_0", "demo_2"]
    mapping = SourceMapping.for_source(path, "hdf5_robomimic")
    assert mapping.state_key == "robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos"
    for got, want in zip(load_all(RobomimicReader(path)), episodes, strict=True):
        assert_same_episode(got, want)
    filtered = RobomimicReader(
        path, mapping=SourceMapping(**{**mapping.to_dict(), "extra": {"filter_key": "train"}})
    )
    assert [r.index for r in filtered.list_episodes()] == [0, 2]
    missing = RobomimicReader(
        path, mapping=SourceMapping(**{**mapping.to_dict(), "extra": {"filter_key": "valid"}})
    )
    with pytest.raises(LoadError) as err:
        missing.list_episodes()
    assert err.value.reason == "missing_key" and "mask/valid" in str(err.value)


def test_robomimic_foreign_file_uses_mapping_and_env_args(tmp_path: Path) -> None:
    """A file written the way robomimic writes it (no gwp_* attributes) reads through a config mapping."""
    path = tmp_path / "image.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 10}}
        )
        for i, t in ((10, 4), (2, 3)):  # demo_10 sorts after demo_2 by number, not by name
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t
            g["actions"] = rng.normal(size=(t, 7))
            g["obs/robot0_eef_pos"] = rng.normal(size=(t, 3))
            g["obs/robot0_eef_quat"] = rng.normal(size=(t, 4))
            g["obs/robot0_gripper_qpos"] = rng.normal(size=(t, 2))
            g["obs/agentview_image"] = rng.integers(0, 255, size=(t, 8, 8, 3), dtype=np.uint8)
        data.attrs["total"] = 7
    mapping = SourceMapping(
        embodiment="franka_robomimic",
        cameras={"agentview_image": "high"},
        state_key="robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos",
        action_key="actions",
        instruction="lift the cube",
        source="robomimic_lift",
    )
    reader = RobomimicReader(path, mapping=mapping)
    assert [r.index for r in reader.list_episodes()] == [2, 10]
    ep = load_all(reader)[1]
    assert ep.instruction == "lift the cube" and ep.fps == 10.0 and ep.source == "robomimic_lift"
    with h5py.File(path, "r") as f:
        g = f["data/demo_10"]
        want_state = np.concatenate(
            [g["obs/robot0_eef_pos"][()], g["obs/robot0_eef_quat"][()], g["obs/robot0_gripper_qpos"][()]], 1
        )
        np.testing.assert_array_equal(ep.state, want_state.astype(np.float32))
        np.testing.assert_array_equal(decode_frames(ep.cameras["high"]), g["obs/agentview_image"][()])
    np.testing.assert_allclose(ep.timestamps, np.arange(4) / 10.0)


def test_robomimic_bad_demos_are_rejected_one_by_one(tmp_path: Path) -> None:
    episodes = make_episodes("metaworld_sawyer", lengths=(5, 6, 7, 8), hw=(16, 16))
    path = write_robomimic_hdf5(episodes, tmp_path / "bad.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/robot0_state"]  # missing state key
        img = f["data/demo_1/obs/agentview_image"][()]
        del f["data/demo_1/obs/agentview_image"]
        f["data/demo_1/obs/agentview_image"] = img[:-2]  # images shorter than actions
        actions = f["data/demo_2/actions"]
        actions[3, 1] = np.nan
    reader = RobomimicReader(path)
    outcomes: dict[int, object] = {}
    for ref in reader.list_episodes():
        try:
            outcomes[ref.index] = reader.load(ref)
        except LoadError as err:
            outcomes[ref.index] = err
    assert outcomes[0].reason == "missing_key" and "robot0_state" in outcomes[0].detail
    assert outcomes[1].reason == "length_mismatch"
    assert "bad.hdf5" in str(outcomes[1]) and "demo_1" in str(outcomes[1])
    assert outcomes[2].reason == "nan_action" and outcomes[2].episode == "demo_2"
    assert_same_episode(outcomes[3], episodes[3])
    rejection = outcomes[1].to_rejection(source="bad")
    assert rejection.reason == "length_mismatch" and rejection.episode == "demo_1"


def test_robomimic_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "fake.hdf5"
    path.write_text("this is not an HDF5 file\n")
    mapping = SourceMapping(
        embodiment="metaworld_sawyer", cameras={}, state_key="robot0_state", action_key="actions"
    )
    assert not RobomimicReader.detect(path)
    with pytest.raises(LoadError) as err:
        RobomimicReader(path, mapping=mapping).list_episodes()
    assert err.value.reason == "bad_file" and "fake.hdf5" in str(err.value)
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("something_else")
    with pytest.raises(LoadError) as err:
        RobomimicReader(tmp_path / "empty.hdf5", mapping=mapping).list_episodes()
    assert err.value.reason == "bad_file"


# ---- ACT / ALOHA -------------------------------------------------------------------------


def test_aloha_roundtrip_and_layout(tmp_path: Path) -> None:
    episodes = make_episodes("aloha", lengths=(4, 7, 5), hw=(24, 32))
    root = write_aloha_hdf5(episodes, tmp_path / "aloha_sim")
    assert sorted(p.name for p in root.glob("*.hdf5")) == [
        "episode_0.hdf5",
        "episode_1.hdf5",
        "episode_2.hdf5",
    ]
    with h5py.File(root / "episode_1.hdf5", "r") as f:
        assert bool(f.attrs["sim"]) is True
        assert f["/observations/qpos"].shape == (7, 14)
        assert f["/observations/qvel"].shape == (7, 14)
        assert f["/action"].shape == (7, 14)
        assert sorted(f["/observations/images"]) == [
            "cam_high",
            "cam_left_wrist",
            "cam_low",
            "cam_right_wrist",
        ]
        assert f["/observations/images/cam_low"].shape == (7, 24, 32, 3)
        np.testing.assert_allclose(
            f["/observations/qvel"][1], (episodes[1].state[1] - episodes[1].state[0]) * 50, rtol=1e-5
        )
    assert AlohaReader.detect(root) and not RobomimicReader.detect(root)
    loaded = load_all(AlohaReader(root))
    for got, want in zip(loaded, episodes, strict=True):
        assert_same_episode(got, want)
        assert got.cameras["left_wrist"].key == "/observations/images/cam_left_wrist"


def test_aloha_writer_accepts_metaworld(tmp_path: Path) -> None:
    episodes = make_episodes("metaworld_sawyer")
    root = write_aloha_hdf5(episodes, tmp_path / "mw_aloha", sim=True)
    mapping = SourceMapping.for_source(root, "hdf5_aloha")
    assert mapping.cameras == {"cam_high": "high", "cam_wrist": "wrist"}
    for got, want in zip(load_all(AlohaReader(root)), episodes, strict=True):
        assert_same_episode(got, want)


def test_aloha_compressed_variant(tmp_path: Path) -> None:
    episodes = make_episodes("aloha", lengths=(6, 3), hw=(48, 64))
    root = write_aloha_hdf5(episodes, tmp_path / "aloha_jpeg", compress=True, jpeg_quality=95)
    with h5py.File(root / "episode_0.hdf5", "r") as f:
        assert bool(f.attrs["compress"])
        rows = f["/observations/images/cam_high"]
        assert rows.ndim == 2 and rows.shape[0] == 6
        assert f["compress_len"].shape == (4, 6)
        assert int(f["compress_len"][0, 0]) <= rows.shape[1]
    loaded = load_all(AlohaReader(root))
    for got, want in zip(loaded, episodes, strict=True):
        assert got.cameras["high"].kind == "encoded"
        assert_same_episode(got, want, exact_frames=False, min_psnr=30.0)
    assert from_table(Episode, to_table(loaded)) == loaded  # the JPEG bytes travel in the row


def test_aloha_bad_files_are_rejected_one_by_one(tmp_path: Path) -> None:
    episodes = make_episodes("aloha", lengths=(4, 5, 6, 7), hw=(8, 8))
    root = write_aloha_hdf5(episodes, tmp_path / "aloha_bad")
    with h5py.File(root / "episode_0.hdf5", "a") as f:
        del f["/observations/qpos"]
    with h5py.File(root / "episode_1.hdf5", "a") as f:
        f["/action"][2, 5] = np.inf
    with h5py.File(root / "episode_2.hdf5", "a") as f:
        img = f["/observations/images/cam_high"][()]
        del f["/observations/images/cam_high"]
        f["/observations/images/cam_high"] = img[:4]
    (root / "episode_4.hdf5").write_bytes(b"\x00garbage" * 10)
    reader = AlohaReader(root)
    refs = reader.list_episodes()
    assert [r.index for r in refs] == [0, 1, 2, 3, 4]
    outcomes = {}
    for ref in refs:
        try:
            outcomes[ref.index] = reader.load(ref)
        except LoadError as err:
            outcomes[ref.index] = err
    assert outcomes[0].reason == "missing_key" and "qpos" in outcomes[0].detail
    assert outcomes[1].reason == "nan_action" and "episode_1.hdf5" in str(outcomes[1])
    assert outcomes[2].reason == "length_mismatch" and "episode_2.hdf5" in str(outcomes[2])
    assert_same_episode(outcomes[3], episodes[3])
    assert outcomes[4].reason == "bad_file" and "episode_4.hdf5" in str(outcomes[4])


def test_writers_reject_mixed_embodiments(tmp_path: Path) -> None:
    mixed = [make_episode("metaworld_sawyer", 3, 0, (8, 8)), make_episode("aloha", 3, 1, (8, 8))]
    with pytest.raises(ValueError, match="one embodiment"):
        write_robomimic_hdf5(mixed, tmp_path / "x.hdf5")
    with pytest.raises(ValueError, match="one embodiment"):
        write_aloha_hdf5(mixed, tmp_path / "x")
