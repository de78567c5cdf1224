"""Schema tests: every record round-trips through Arrow; every invalid field fails clearly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import schemas
from schemas import (
    DimStats,
    EmbodimentSpec,
    EmbodimentStats,
    Episode,
    FrameRef,
    Manifest,
    Rejection,
    Sample,
    SchemaError,
    SchemaVersionError,
    ShardInfo,
    SourceInput,
    from_table,
    to_table,
)
from tests.support.samples import window_sample


def make_episode(t: int = 6) -> Episode:
    rng = np.random.default_rng(0)
    return Episode(
        episode_id=schemas.episode_id_for("sim", "data/file-000.parquet", 3),
        source="sim",
        embodiment="metaworld_sawyer",
        instruction="open the drawer",
        fps=80.0,
        state=rng.normal(size=(t, 4)).astype(np.float32),
        action=rng.normal(size=(t, 4)).astype(np.float32),
        timestamps=np.arange(t, dtype=np.float64) / 80.0,
        cameras={
            "high": FrameRef(kind="inline", array=rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)),
            "wrist": FrameRef(
                kind="video", path="videos/wrist/file-000.mp4", start=10, stop=10 + t, fps=80.0
            ),
        },
        source_path="data/file-000.parquet",
        source_index=3,
    )


def make_sample(p: int = 5) -> Sample:
    return window_sample(
        "ep",
        0,
        action_Pd=np.linspace(-1, 1, p * 4, dtype=np.float32).reshape(p, 4),
        state_d=np.array([0.1, 0.2, 0.3, 0.4]),
        num_future=2,
        stride=2,
        source="sim",
        instruction="open the drawer",
        caption="a robot arm next to a drawer",
        video=b"\x89PNG fake",
        height=16,
        width=16,
        quality={"motion": 0.5, "brightness": 0.4},
    )


def make_manifest() -> Manifest:
    st = DimStats(
        mean=(0.0,) * 4,
        std=(1.0,) * 4,
        min=(-1.0,) * 4,
        max=(1.0,) * 4,
        q01=(-0.9,) * 4,
        q99=(0.9,) * 4,
        count=10,
    )
    return Manifest(
        code_version="0.1.0",
        config={"window": {"chunk": 48}},
        counts={
            "episodes_in": 3,
            "episodes_with_samples": 2,
            "episodes_rejected": 1,
            "windows_in": 10,
            "samples": 9,
            "windows_rejected": 1,
        },
        stats={"metaworld_sawyer": EmbodimentStats("metaworld_sawyer", st, st)},
        sources=(SourceInput("src/a", "lerobot_v3", "ab" * 32, 3),),
        shards=(ShardInfo("data/shard-00000.parquet", 9, "cd" * 32, 1234),),
        rejections=(
            Rejection("filter.static_video", "static_video", "src/a/x.mp4", "ep3", "motion 0.001 < 0.01"),
        ),
        stage_counts={"load": {"in": 3, "out": 3}},
    )


RECORDS = {
    "EmbodimentSpec": lambda: schemas.get_embodiment("agilex_dual_arm"),
    "Episode": make_episode,
    "Sample": make_sample,
    "Manifest": make_manifest,
    "Rejection": lambda: Rejection("load", "missing_video", "a/b.mp4", "a#1", "no such file", "src", -1),
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_through_arrow(name, tmp_path):
    record = RECORDS[name]()
    table = to_table([record, record])
    assert table.schema.metadata[b"gwp_schema_version"] == schemas.SCHEMA_VERSION.encode()
    # through a real Parquet file, as shards and manifests travel
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "r.parquet")
    back = from_table(type(record), pq.read_table(tmp_path / "r.parquet"), where=str(tmp_path / "r.parquet"))
    assert back == [record, record]


def test_manifest_json_round_trip():
    m = make_manifest()
    assert Manifest.from_json(m.to_json()) == m


def test_schema_version_mismatch_names_the_file():
    table = to_table([make_sample()])
    table = table.replace_schema_metadata({b"gwp_schema_version": b"9.0"})
    with pytest.raises(SchemaVersionError, match=r"shard-7\.parquet.*'9\.0'"):
        from_table(Sample, table, where="shard-7.parquet")
    bad = json.loads(make_manifest().to_json())
    bad["schema_version"] = "0.3"
    with pytest.raises(SchemaVersionError, match=r"meta/manifest\.json"):
        Manifest.from_dict(bad, where="meta/manifest.json")


def test_registry_has_the_required_robots():
    names = schemas.list_embodiments()
    for required in ("metaworld_sawyer", "agilex_dual_arm", "aloha", "franka_robomimic", "franka_droid"):
        assert required in names
    saw = schemas.get_embodiment("metaworld_sawyer")
    assert (saw.action_dim, saw.state_dim) == (4, 4)
    assert all(d.mode == "absolute" for d in saw.action_dims)
    agx = schemas.get_embodiment("agilex_dual_arm")
    assert agx.action_dim == 14 and agx.cameras == ("high", "left_wrist", "right_wrist")
    modes = [d.mode for d in agx.action_dims]
    assert modes == (["delta"] * 6 + ["absolute"]) * 2
    assert schemas.embodiment_by_id(agx.id) == agx
    ids = [schemas.get_embodiment(n).id for n in names]
    assert len(set(ids)) == len(ids)


def test_unknown_embodiment_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'aloha'"):
        schemas.get_embodiment("alhoa")


def test_new_robot_is_added_by_data(tmp_path):
    spec = {
        "name": "my_gripper_bot",
        "id": 900,
        "control_hz": 10,
        "cameras": ["high"],
        "state_names": ["j0", "g"],
        "action_dims": [{"name": "j0", "mode": "delta", "state": "j0"}, {"name": "g"}],
    }
    path = tmp_path / "my_gripper_bot.json"
    path.write_text(json.dumps(spec))
    loaded = schemas.load_embodiment_file(path)
    assert loaded.delta_state_index() == [0, -1]
    schemas.register_embodiment(loaded)
    assert schemas.get_embodiment("my_gripper_bot") == loaded
    clash = EmbodimentSpec.from_dict({**spec, "name": "other_bot"})
    with pytest.raises(SchemaError, match=r"EmbodimentSpec\.id: id 900 is already used by 'my_gripper_bot'"):
        schemas.register_embodiment(clash)


BAD_SPECS = [
    ({"control_hz": -1}, r"EmbodimentSpec\.control_hz: must be a positive"),
    ({"cameras": ["top"]}, r"EmbodimentSpec\.cameras: must be one of"),
    ({"state_names": [f"s{i}" for i in range(33)]}, r"EmbodimentSpec\.state_names: needs 1\.\.32 dims"),
    ({"action_dims": [{"name": "a", "mode": "delta", "state": "nope"}]}, r"action_dims\[a\]\.state"),
    ({"action_dims": [{"name": "a", "mode": "relative"}]}, r"action_dims\[a\]\.mode: must be one of"),
    ({"colour": "red"}, r"EmbodimentSpec\.colour: unknown field"),
]


@pytest.mark.parametrize(("change", "message"), BAD_SPECS)
def test_bad_embodiment_fields(change, message, tmp_path):
    spec = schemas.get_embodiment("metaworld_sawyer").to_dict() | change
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SchemaError, match=message):
        schemas.load_embodiment_file(path)


def _nan_action(ep):
    a = ep.action.copy()
    a[2, 1] = np.nan
    return ep.with_(action=a)


BAD_EPISODES = [
    (lambda e: e.with_(embodiment="sawyer"), r"Episode\.embodiment: unknown embodiment 'sawyer'"),
    (lambda e: e.with_(action=e.action[:, :3]), r"Episode\.action: expected shape \(\*, 4\), got \(6, 3\)"),
    (lambda e: e.with_(state=e.state[:5]), r"Episode\.state: expected shape \(6, 4\)"),
    (_nan_action, r"Episode\.action: contains 1 NaN/inf"),
    (lambda e: e.with_(action=e.action.astype(np.float64)), r"Episode\.action: expected dtype float32"),
    (lambda e: e.with_(fps=0.0), r"Episode\.fps: must be a positive"),
    (lambda e: e.with_(episode_id=""), r"Episode\.episode_id: must not be empty"),
    (
        lambda e: e.with_(cameras={"wrist": FrameRef("video", "x.mp4", start=0, stop=4)}),
        r"Episode\.cameras\[wrist\]: has 4 frames but the episode has 6 steps",
    ),
    (lambda e: e.with_(cameras={"left_wrist": e.cameras["high"]}), r"Episode\.cameras: must be one of"),
    (
        lambda e: e.with_(action=e.action[:0], state=e.state[:0], timestamps=e.timestamps[:0], cameras={}),
        r"Episode\.action: episode has zero steps",
    ),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_EPISODES)
def test_bad_episode_fields(corrupt, message):
    ep = make_episode().validate()
    with pytest.raises(SchemaError, match=message):
        corrupt(ep).validate()


def _pad_nonzero(s):
    a = s.action.copy()
    a[0, 20] = 1.0
    return s.with_(action=a)


BAD_SAMPLES = [
    (lambda s: s.with_(action=s.action[:, :16]), r"Sample\.action: expected shape \(\*, 32\)"),
    (lambda s: s.with_(action_mask=np.zeros(32, dtype=bool)), r"Sample\.action_mask: no valid action dim"),
    (_pad_nonzero, r"Sample\.action: padded dims \(mask False\) must be zero"),
    (lambda s: s.with_(video_format="gif"), r"Sample\.video_format: must be one of"),
    (lambda s: s.with_(video=b""), r"Sample\.video: expected non-empty"),
    (lambda s: s.with_(frame_indices=(0, 4, 2)), r"Sample\.frame_indices: must increase"),
    (lambda s: s.with_(frame_indices=(1, 2)), r"Sample\.frame_indices: must start with start_frame"),
    (lambda s: s.with_(quality={"beauty": 1.0}), r"Sample\.quality: must be one of"),
    (lambda s: s.with_(quality={"motion": float("nan")}), r"Sample\.quality\[motion\]: must be finite"),
    (lambda s: s.with_(embodiment_id=-1), r"Sample\.embodiment_id: must be >= 0"),
    (lambda s: s.with_(video_format="latent"), r"Sample\.latent_shape: required"),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_SAMPLES)
def test_bad_sample_fields(corrupt, message):
    s = make_sample().validate()
    with pytest.raises(SchemaError, match=message):
        corrupt(s).validate()


def test_manifest_accounting_must_balance():
    m = make_manifest().validate()
    counts = dict(m.counts, episodes_rejected=0)
    with pytest.raises(SchemaError, match=r"Manifest\.counts: episodes_in \(3\) != episodes_with_samples"):
        Manifest(**{**m.__dict__, "counts": counts}).validate()
    counts = dict(m.counts, samples=8, windows_rejected=2)
    with pytest.raises(SchemaError, match=r"Manifest\.shards: shard rows do not add up"):
        Manifest(**{**m.__dict__, "counts": counts}).validate()


def test_rejection_fields():
    with pytest.raises(SchemaError, match=r"Rejection\.path: must not be empty"):
        Rejection("load", "bad_video", "", "ep").validate()


def test_to_table_rejects_an_invalid_record():
    with pytest.raises(SchemaError, match=r"Sample\.video_format"):
        to_table([make_sample().with_(video_format="gif")])
    assert isinstance(to_table([make_sample()]), pa.Table)
