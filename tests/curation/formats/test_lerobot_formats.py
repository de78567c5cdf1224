"""LeRobot v3.0 and v2.1: write synthetic episodes, read them back, and break them on purpose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation.formats.base import EpisodeRef
from curation.formats.lerobot_v2 import LeRobotV2Reader, write_lerobot_v2
from curation.formats.lerobot_v3 import LeRobotV3Reader, write_lerobot_v3
from curation.frames import decode_frames
from schemas import Episode, FrameRef, episode_id_for
from schemas.errors import LoadError

LENGTHS = (20, 33, 40)
TASKS = ("push the puck to the goal", "open the drawer", "push the puck to the goal")


def smooth_frames(t: int, phase: float, h: int = 64, w: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3] moving gradients, distinct per frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    k = np.arange(t, dtype=np.float64)[:, None, None] + phase
    r = 128 + 100 * np.sin(x / 9 + 0.5 * k)
    g = 128 + 100 * np.cos(y / 11 - 0.4 * k)
    b = 40 + 5 * (k % 36) + 0 * x
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_episodes() -> list[Episode]:
    rng = np.random.default_rng(7)
    out = []
    for i, t in enumerate(LENGTHS):
        out.append(
            Episode(
                episode_id=episode_id_for("synthetic", "mem", i),
                source="synthetic",
                embodiment="metaworld_sawyer",
                instruction=TASKS[i],
                fps=10.0,
                state=rng.normal(size=(t, 4)).astype(np.float32),
                action=rng.uniform(-1, 1, size=(t, 4)).astype(np.float32),
                timestamps=np.arange(t, dtype=np.float64) / 10.0,
                cameras={
                    "high": FrameRef(kind="inline", array=smooth_frames(t, 11.0 * i)),
                    "wrist": FrameRef(kind="inline", array=smooth_frames(t, 5.0 * i + 40)),
                },
            ).validate()
        )
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


WRITERS = {
    "v3": (write_lerobot_v3, LeRobotV3Reader),
    "v2": (write_lerobot_v2, LeRobotV2Reader),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lerobot")
    # A generator on purpose: the writers must stream, not index a list.
    return {
        name: writer((ep for ep in make_episodes()), base / name, repo_id="tests/synthetic")
        for name, (writer, _) in WRITERS.items()
    }


def copy_of(written: dict[str, Path], fmt: str, tmp_path: Path) -> Path:
    dst = tmp_path / fmt
    shutil.copytree(written[fmt], dst)
    return dst


def check_round_trip(root: Path, reader_cls, originals: list[Episode]) -> list[Episode]:
    reader = reader_cls(root)
    refs = reader.list_episodes()
    assert [r.index for r in refs] == list(range(len(originals)))
    loaded = []
    for ref, want in zip(refs, originals, strict=True):
        ref = EpisodeRef.from_row(ref.to_row())  # refs cross Ray workers as rows
        ep = reader_cls(root).load(ref)
        assert ep.length == want.length
        np.testing.assert_array_equal(ep.state, want.state)
        np.testing.assert_array_equal(ep.action, want.action)
        np.testing.assert_allclose(ep.timestamps, want.timestamps, atol=1e-6)
        assert ep.instruction == want.instruction
        assert (ep.embodiment, ep.fps, ep.source, ep.source_index) == (
            "metaworld_sawyer",
            10.0,
            "synthetic",
            ref.index,
        )
        assert ep.episode_id == episode_id_for(reader_cls(root).dataset_id, ref.locator["data"], ref.index)
        assert set(ep.cameras) == {"high", "wrist"}
        for role in ("high", "wrist"):
            assert ep.cameras[role].kind == "video"
            got = decode_frames(ep.cameras[role])
            assert got.shape == (want.length, 64, 64, 3)
            assert psnr(got, want.cameras[role].array) >= 30, (ref.index, role)
        loaded.append(ep)
    assert len({ep.episode_id for ep in loaded}) == len(loaded)
    return loaded


@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_round_trip(written, fmt):
    check_round_trip(written[fmt], WRITERS[fmt][1], make_episodes())


def test_v3_layout_packs_episodes(written):
    root = written["v3"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"]["observation.images.high"]["info"]["video.codec"] == "av1"
    assert info["features"]["observation.state"]["names"] == ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    # Three episodes in one data file and one mp4 per camera, back to back.
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("data/*/*")) == [
        "data/chunk-000/file-000.parquet"
    ]
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    starts = np.cumsum([0, *LENGTHS[:-1]])
    for row, n, s in zip(eps, LENGTHS, starts, strict=True):
        assert (row["length"], row["dataset_from_index"], row["dataset_to_index"]) == (n, s, s + n)
        assert row["videos/observation.images.wrist/file_index"] == 0
        assert row["videos/observation.images.wrist/from_timestamp"] == pytest.approx(s / 10)
        assert row["videos/observation.images.wrist/to_timestamp"] == pytest.approx((s + n) / 10)
        assert len(row["stats/observation.images.high/mean"]) == 3
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column("index").to_pylist() == list(range(sum(LENGTHS)))
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert dict(zip(tasks["task"], tasks["task_index"], strict=True)) == {TASKS[0]: 0, TASKS[1]: 1}
    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([ep.action for ep in make_episodes()])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], all_actions.std(0), rtol=1e-5, atol=1e-6)
    assert stats["action"]["count"] == [sum(LENGTHS)]


def test_v3_rolls_files_past_size_limits(tmp_path):
    root = write_lerobot_v3(
        make_episodes(), tmp_path / "synthetic", codec="h264", data_file_mb=1e-4, video_file_mb=1e-4
    )  # default repo id: the source is named after the folder
    assert len(list(root.glob("data/chunk-000/file-*.parquet"))) == 3
    # Encoders hold back a lookahead of frames, so video rolls over one episode late at worst.
    assert len(list(root.glob("videos/observation.images.high/chunk-000/file-*.mp4"))) >= 2
    assert not list(root.rglob("*.part"))
    check_round_trip(root, LeRobotV3Reader, make_episodes())


def test_v2_layout(written):
    root = written["v2"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 6
    for i in range(3):
        assert (root / f"data/chunk-000/episode_{i:06d}.parquet").exists()
        assert (root / f"videos/chunk-000/observation.images.wrist/episode_{i:06d}.mp4").exists()
    lines = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert [x["length"] for x in lines] == list(LENGTHS)
    assert [x["tasks"] for x in lines] == [[t] for t in TASKS]
    stats = [json.loads(x) for x in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(
        stats[1]["stats"]["observation.state"]["max"], make_episodes()[1].state.max(0), rtol=1e-6
    )
    assert stats[1]["stats"]["observation.images.high"]["count"] == [LENGTHS[1]]


def test_detect(written, tmp_path):
    assert LeRobotV3Reader.detect(written["v3"]) and not LeRobotV3Reader.detect(written["v2"])
    assert LeRobotV2Reader.detect(written["v2"]) and not LeRobotV2Reader.detect(written["v3"])
    assert not LeRobotV3Reader.detect(tmp_path)


def test_writer_rejects_bad_input(tmp_path, written):
    eps = make_episodes()
    other = eps[1].with_(cameras={"high": eps[1].cameras["high"]})
    with pytest.raises(ValueError, match="cameras"):
        write_lerobot_v3([eps[0], other], tmp_path / "mixed", codec="h264")
    assert not (tmp_path / "mixed" / "meta").exists()  # a failed write leaves nothing half-done
    with pytest.raises(FileExistsError):
        write_lerobot_v2(eps, written["v2"])
    with pytest.raises(ValueError, match="roles"):
        write_lerobot_v3(eps, tmp_path / "keys", camera_keys={"left_wrist": "observation.images.x"})
    custom = write_lerobot_v2(
        eps[:1], tmp_path / "custom", camera_keys={"high": "observation.images.cam_high"}
    )
    assert (custom / "videos/chunk-000/observation.images.cam_high/episode_000000.mp4").exists()
    assert LeRobotV2Reader(custom).load(LeRobotV2Reader(custom).list_episodes()[0]).cameras.keys() == {
        "high",
        "wrist",
    }


# ---- broken datasets: every problem is a LoadError naming the file and the episode ------------


def rewrite_parquet(path: Path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def nan_in_action(table: pa.Table, episode: int) -> pa.Table:
    action = np.stack(table.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
    ep = table.column("episode_index").to_numpy()
    action[np.flatnonzero(ep == episode)[3], 2] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 4)
    return table.set_column(table.schema.get_field_index("action"), "action", col)


def load_error(reader_cls, root: Path, index: int) -> LoadError:
    reader = reader_cls(root)
    ref = next(r for r in reader.list_episodes() if r.index == index)
    with pytest.raises(LoadError) as err:
        reader.load(ref)
    assert f"episode_{index:06d}" == err.value.episode
    return err.value


def test_v3_bad_inputs(written, tmp_path):
    # missing column in the data parquet
    root = copy_of(written, "v3", tmp_path / "a")
    data = root / "data/chunk-000/file-000.parquet"
    rewrite_parquet(data, lambda t: t.drop_columns(["action"]))
    err = load_error(LeRobotV3Reader, root, 1)
    assert err.reason == "missing_column" and err.path == str(data) and "action" in err.detail

    # NaN action in episode 2 only; the others still load
    root = copy_of(written, "v3", tmp_path / "b")
    data = root / "data/chunk-000/file-000.parquet"
    rewrite_parquet(data, lambda t: nan_in_action(t, 2))
    err = load_error(LeRobotV3Reader, root, 2)
    assert err.reason == "nan_action" and err.path == str(data) and "step 3" in err.detail
    assert LeRobotV3Reader(root).load(LeRobotV3Reader(root).list_episodes()[0]).length == LENGTHS[0]

    # missing and corrupt video files
    root = copy_of(written, "v3", tmp_path / "c")
    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    video.unlink()
    err = load_error(LeRobotV3Reader, root, 0)
    assert err.reason == "missing_video" and err.path == str(video)
    video.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 200)
    err = load_error(LeRobotV3Reader, root, 0)
    assert err.reason == "bad_video" and err.path == str(video)

    # metadata says more frames than the parquet holds
    root = copy_of(written, "v3", tmp_path / "d")
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    rewrite_parquet(
        meta,
        lambda t: t.set_column(
            t.schema.get_field_index("length"),
            "length",
            pc.if_else(pc.equal(t.column("episode_index"), 1), 34, t.column("length")),
        ),
    )
    err = load_error(LeRobotV3Reader, root, 1)
    assert err.reason == "length_mismatch"

    # a video span shorter than the file claims: the span points past the end
    root = copy_of(written, "v3", tmp_path / "e")
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    key = "videos/observation.images.high/to_timestamp"
    rewrite_parquet(
        meta, lambda t: t.set_column(t.schema.get_field_index(key), key, pc.add(t.column(key), 1.0))
    )
    err = load_error(LeRobotV3Reader, root, 2)
    assert err.reason == "length_mismatch" and "observation.images.high" in err.path

    # episodes metadata without the video columns: the source cannot be listed at all
    rewrite_parquet(meta, lambda t: t.drop_columns([key]))
    with pytest.raises(LoadError) as exc:
        LeRobotV3Reader(root).list_episodes()
    assert exc.value.reason == "missing_column" and exc.value.path == str(meta)


def test_v2_bad_inputs(written, tmp_path):
    root = copy_of(written, "v2", tmp_path / "a")
    data = root / "data/chunk-000/episode_000001.parquet"
    rewrite_parquet(data, lambda t: nan_in_action(t, 1))
    err = load_error(LeRobotV2Reader, root, 1)
    assert err.reason == "nan_action" and err.path == str(data)

    rewrite_parquet(data, lambda t: t.drop_columns(["observation.state"]))
    err = load_error(LeRobotV2Reader, root, 1)
    assert err.reason == "missing_column" and err.path == str(data)

    video = root / "videos/chunk-000/observation.images.high/episode_000002.mp4"
    video.unlink()
    err = load_error(LeRobotV2Reader, root, 2)
    assert err.reason == "missing_video" and err.path == str(video)

    # truncated mp4 (moov atom at the end is lost)
    video = root / "videos/chunk-000/observation.images.wrist/episode_000000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    err = load_error(LeRobotV2Reader, root, 0)
    assert err.reason == "bad_video" and err.path == str(video)

    root = copy_of(written, "v2", tmp_path / "b")
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["length"] = 50
    lines[1] = json.dumps(row)
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    err = load_error(LeRobotV2Reader, root, 1)
    assert err.reason in ("length_mismatch", "video_too_short") and "episode_000001" in str(err)


def test_v3_data_file_is_read_once_for_all_its_episodes(tmp_path, written, monkeypatch):
    """Episodes packed in one data parquet: one read for all of them (not one per episode),
    each episode's rows in frame order even when the file has them shuffled, and a rewritten
    file is read again."""
    from curation.formats import lerobot_reader

    root = tmp_path / "v3"
    shutil.copytree(written["v3"], root)
    (data_file,) = sorted((root / "data").rglob("*.parquet"))
    table = pq.read_table(data_file)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    pq.write_table(shuffled, data_file)
    reads = []
    real_read = pq.read_table
    monkeypatch.setattr(
        lerobot_reader.pq, "read_table", lambda *a, **k: (reads.append(a[0]), real_read(*a, **k))[1]
    )
    lerobot_reader._data_file.cache_clear()
    reader = LeRobotV3Reader(root)
    episodes = [reader.load(ref) for ref in reader.list_episodes()]
    assert [str(r) for r in reads].count(str(data_file)) == 1
    for ep, want in zip(episodes, make_episodes(), strict=True):
        np.testing.assert_allclose(ep.action, want.action, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ep.state, want.state, rtol=0, atol=1e-6)
    pq.write_table(table, data_file)  # a new version of the file: read again
    reader.load(reader.list_episodes()[0])
    assert [str(r) for r in reads].count(str(data_file)) == 2
