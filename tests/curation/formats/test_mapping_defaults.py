"""Sources that need no written mapping, mappings people write by hand, and ``gwp inspect``.

Datasets are written by our own writers with LeRobot's feature names
(``observation.images.top`` / ``observation.images.wrist``, ``robot_type`` in info.json) and
then lose their ``gwp_source.json``: what is left is what a dataset written by LeRobot holds
(tests/curation/formats/test_lerobot_native.py checks one LeRobot wrote itself). Every case checks the
episodes read (numbers exactly, frames against the originals) or the exact ledger reason
and file, and that inputs = episodes + rejections. Each refused source is also a row of
RELIABILITY.md (group "config": a mapping that cannot be used), through the Recorder of
tests/support/faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.formats.conventions import camera_role
from curation.formats.lerobot_v2 import write_lerobot_v2
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.formats.mapping import SIDECAR_NAME, SourceMapping
from curation.formats.rlds_write import write_rlds
from curation.ingest import SourceSpec, iter_episodes
from pipelines import ingest as gwp_ingest
from pipelines import inspect as gwp_inspect
from schemas import Episode, Rejection, get_embodiment
from tests.support.faults import Recorder
from tests.support.helpers import assert_same_episode, make_episodes

ROOT = Path(__file__).resolve().parents[3]
LEROBOT_KEYS = {"high": "observation.images.top", "wrist": "observation.images.wrist"}
WRITERS = {"lerobot_v3": write_lerobot_v3, "lerobot_v2": write_lerobot_v2}
REC = Recorder()


def assert_refused(source: Path | SourceSpec, case: str, injected: str, reason: str, path: Path) -> Rejection:
    """Reading ``source`` gives one discover-stage rejection with ``reason`` naming ``path`` and no
    episode; recorded as a row."""
    got, rejected = read(source, decode=False)
    observed = [(r.stage, r.reason, r.path) for r in rejected]
    ok = got == [] and observed == [("discover", reason, str(path))]
    REC.add(
        "config",
        case,
        injected,
        f"source refused at discover: {reason} naming {path.name}; 0 episodes + 1 rejection",
        f"{len(got)} episodes; "
        + "; ".join(f"{r.stage}: {r.reason} ({Path(r.path).name}) {r.detail}" for r in rejected),
        ok,
    )
    assert ok, observed
    return rejected[0]


@pytest.fixture(autouse=True)
def embodiment_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Generated specs go to this test's folder, never the user's config."""
    folder = tmp_path / "embodiments"
    folder.mkdir()
    monkeypatch.setenv("GWP_EMBODIMENT_PATH", str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return folder


def lerobot_without_sidecar(
    tmp_path: Path, fmt: str = "lerobot_v3", robot_type: str = "metaworld_sawyer", keys=LEROBOT_KEYS
) -> tuple[Path, list[Episode]]:
    episodes = make_episodes((6, 5), fps=10.0)
    root = WRITERS[fmt](episodes, tmp_path / fmt, robot_type=robot_type, camera_keys=keys)
    (root / SIDECAR_NAME).unlink()
    return root, episodes


def edit_info(root: Path, **features: dict) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    for key, changes in features.items():
        info["features"][key.replace("__", ".")].update(changes)
    path.write_text(json.dumps(info))


def read(*sources, decode: bool = True) -> tuple[list[Episode], list[Rejection]]:
    items = list(iter_episodes(sources, decode=decode))
    episodes = [i for i in items if isinstance(i, Episode)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert len(items) == len(episodes) + len(rejections)
    return episodes, rejections


def assert_read_back(got: list[Episode], want: list[Episode], embodiment: str = "metaworld_sawyer") -> None:
    assert len(got) == len(want)
    for g, w in zip(sorted(got, key=lambda e: e.source_index), want, strict=True):
        assert g.embodiment == embodiment
        assert_same_episode(g.with_(embodiment=w.embodiment), w, lossless=False, min_psnr=30.0)


# ---- LeRobot conventions -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["lerobot_v3", "lerobot_v2"])
def test_lerobot_dataset_reads_with_no_mapping(tmp_path: Path, fmt: str, capsys) -> None:
    root, episodes = lerobot_without_sidecar(tmp_path, fmt)
    got, rejected = read(root)
    assert rejected == []
    assert_read_back(got, episodes)
    assert {role for e in got for role in e.cameras} == {"high", "wrist"}  # top -> high, wrist -> wrist
    assert not (root / SIDECAR_NAME).exists()  # reading writes nothing into the dataset


def test_hand_written_mapping_reads_names_no_alias_knows(tmp_path: Path, capsys) -> None:
    keys = {"high": "observation.images.kinect", "wrist": "observation.images.gopro"}
    root, episodes = lerobot_without_sidecar(tmp_path, keys=keys)
    # without a mapping: no camera name means a role, so the source is refused at discover
    r = assert_refused(
        root,
        "LeRobot cameras no alias knows, no mapping",
        "LeRobot v3.0 without gwp_source.json, cameras observation.images.kinect / .gopro",
        "no_camera",
        root / "meta" / "info.json",
    )
    assert "observation.images.kinect" in r.detail
    # gwp inspect still lists them and gives a starter whose cameras are left to fill in
    assert gwp_inspect.main([str(root), "--json"]) == 0
    out, err = capsys.readouterr()
    starter = json.loads(out)["mapping"]
    assert (starter["embodiment"], starter["cameras"]) == ("metaworld_sawyer", {})
    assert "fill in cameras" in err
    assert json.loads(out)["source"]["cameras"] == ["observation.images.kinect", "observation.images.gopro"]
    # a hand-written sidecar (keys left out take LeRobot's names) reads it exactly
    (root / SIDECAR_NAME).write_text(
        json.dumps(
            {"embodiment": "metaworld_sawyer", "cameras": {keys["high"]: "high", keys["wrist"]: "wrist"}}
        )
    )
    got, rejected = read(root)
    assert rejected == []
    assert_read_back(got, episodes)


@pytest.mark.parametrize("how", ["robot_type", "dim_names"])
def test_embodiment_inferred_from_robot_type_or_dim_names(tmp_path: Path, how: str) -> None:
    # our writer stores the spec's dim names; "unknown" is LeRobot's robot_type when none was set
    robot_type = "metaworld_sawyer" if how == "robot_type" else "unknown"
    root, episodes = lerobot_without_sidecar(tmp_path, robot_type=robot_type)
    if how == "robot_type":
        edit_info(root, observation__state={"names": None}, action={"names": None})
    got, rejected = read(root)
    assert rejected == []
    assert_read_back(got, episodes)
    assert list((tmp_path / "embodiments").iterdir()) == []  # nothing generated


def test_embodiment_flag_names_the_robot(tmp_path: Path, embodiment_folder: Path, capsys) -> None:
    root, episodes = lerobot_without_sidecar(tmp_path, robot_type="lab_arm_flagged")
    edit_info(root, observation__state={"names": None}, action={"names": None})
    got, rejected = read(SourceSpec(path=str(root), embodiment="metaworld_sawyer"))
    assert rejected == []
    assert_read_back(got, episodes)
    assert list(embodiment_folder.iterdir()) == []
    # the same flag on the command line, and in a curation config's source entry
    assert gwp_ingest.main([str(root), "--embodiment", "metaworld_sawyer"]) == 0
    capsys.readouterr()
    # a misspelt robot on the command line: one line, exit 2, before anything is read
    for command in (gwp_ingest.main, gwp_inspect.main):
        assert command([str(root), "--embodiment", "metaworld_sawyr"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did you mean 'metaworld_sawyer'" in err
    entry = SourceSpec.coerce({"path": str(root), "embodiment": "aloha"})
    assert entry.embodiment == "aloha" and SourceSpec.from_row(entry.to_row()) == entry  # the Ray path
    from pipelines.curate import build_parser

    assert build_parser().parse_args(["--embodiment", "aloha"]).embodiment == "aloha"
    # a robot whose dims do not fit is refused for the source, naming the feature; a misspelt one
    # is refused with the robot it probably means
    for robot, case, injected, reason, detail in (
        (
            "aloha",
            "--embodiment of other dims",
            "--embodiment aloha (14/14 dims) for a 4/4-dim LeRobot dataset",
            "bad_shape",
            "observation.state",
        ),
        (
            "alohha",
            "--embodiment misspelt",
            "--embodiment alohha",
            "unknown_embodiment",
            "did you mean 'aloha'",
        ),
    ):
        r = assert_refused(
            SourceSpec(path=str(root), embodiment=robot), case, injected, reason, root / "meta" / "info.json"
        )
        assert detail in r.detail


def test_robot_type_of_a_registered_robot_with_other_dims_is_refused(tmp_path: Path) -> None:
    root, _ = lerobot_without_sidecar(tmp_path, robot_type="aloha")
    r = assert_refused(
        root,
        "robot_type of a registered robot, other dims",
        "LeRobot v3.0 without mapping, robot_type 'aloha' (14/14) over 4/4-dim features",
        "embodiment_mismatch",
        root / "meta" / "info.json",
    )
    assert "--embodiment" in r.detail and list((tmp_path / "embodiments").iterdir()) == []


def test_embodiment_flag_disagreeing_with_the_sidecar_is_refused(tmp_path: Path) -> None:
    episodes = make_episodes((5,))
    root = write_lerobot_v3(episodes, tmp_path / "ds", camera_keys=LEROBOT_KEYS)  # sidecar kept
    assert_refused(
        SourceSpec(path=str(root), embodiment="aloha"),
        "--embodiment disagrees with the mapping",
        "--embodiment aloha for a source whose gwp_source.json says metaworld_sawyer",
        "embodiment_conflict",
        root / SIDECAR_NAME,
    )


def _ingest_cli(root: Path, folder: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "GWP_EMBODIMENT_PATH": str(folder), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipelines.cli", "ingest", str(root)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_unknown_robot_gets_a_generated_spec_saved_and_reused(
    tmp_path: Path, embodiment_folder: Path
) -> None:
    root, episodes = lerobot_without_sidecar(tmp_path, robot_type="Lab Arm-7")
    names = ["j1", "j2", "j3", "gripper"]
    edit_info(root, observation__state={"names": names}, action={"names": names})
    first = _ingest_cli(root, embodiment_folder)
    assert first.returncode == 0, first.stderr
    saved = embodiment_folder / "lab_arm_7.json"
    assert "generated embodiment 'lab_arm_7'" in first.stderr and str(saved) in first.stderr
    spec = json.loads(saved.read_text())
    assert spec["state_names"] == names and spec["cameras"] == ["high", "wrist"]
    assert spec["control_hz"] == 10.0
    # joint dims named like a state dim are targets of it (delta); the gripper is used as given
    assert [(d["name"], d["mode"], d["state"]) for d in spec["action_dims"]] == [
        ("j1", "delta", "j1"),
        ("j2", "delta", "j2"),
        ("j3", "delta", "j3"),
        ("gripper", "absolute", None),
    ]
    assert json.loads(first.stdout)["by_embodiment"] == {"lab_arm_7": 2}
    # the user edits the spec; the next run reads with the edit and generates nothing
    spec["action_dims"][0] = {"name": "j1", "mode": "absolute", "state": None}
    saved.write_text(json.dumps(spec))
    second = _ingest_cli(root, embodiment_folder)
    assert second.returncode == 0, second.stderr
    assert "generated" not in second.stderr and json.loads(second.stdout)["episodes"] == 2
    assert json.loads(saved.read_text()) == spec
    # in this process too: episodes carry the generated robot, numbers exact
    got, rejected = read(root)
    assert rejected == [] and {e.embodiment for e in got} == {"lab_arm_7"}
    assert get_embodiment("lab_arm_7").action_dims[0].mode == "absolute"
    for g, w in zip(sorted(got, key=lambda e: e.source_index), episodes, strict=True):
        np.testing.assert_array_equal(g.action, w.action)
        np.testing.assert_array_equal(g.state, w.state)


def test_camera_aliases() -> None:
    cases = {
        "top": "high",
        "cam_high": "high",
        "overhead": "high",
        "image": "high",
        "wrist": "wrist",
        "cam_wrist": "wrist",
        "hand": "wrist",
        "wrist_image": "wrist",
        "cam_left_wrist": "left_wrist",
        "right_wrist": "right_wrist",
        "cam_low": "low",
        "kinect": None,
    }
    assert {name: camera_role(name) for name in cases} == cases


def test_unmapped_camera_is_skipped_with_a_notice(tmp_path: Path, capsys) -> None:
    root, _ = lerobot_without_sidecar(
        tmp_path, keys={"high": "observation.images.top", "wrist": "observation.images.thermal"}
    )
    got, rejected = read(root)
    assert rejected == [] and [sorted(e.cameras) for e in got] == [["high"], ["high"]]
    assert "camera 'observation.images.thermal' skipped" in capsys.readouterr().err


def test_mapping_with_no_camera_is_refused_at_discover(tmp_path: Path) -> None:
    root = write_lerobot_v3(make_episodes((5, 4)), tmp_path / "ds", camera_keys=LEROBOT_KEYS)
    sidecar = root / SIDECAR_NAME
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "cameras": {}}))
    r = assert_refused(  # one line for the source, not one per episode after curation
        root,
        "mapping with no camera",
        'gwp_source.json with "cameras": {} over a 2-episode LeRobot v3.0 dataset',
        "no_camera",
        sidecar,
    )
    assert "maps no camera" in r.detail and "['high', 'wrist']" in r.detail
    # the same in a curation config's source entry: the source is named, the detail says where
    r = assert_refused(
        SourceSpec(path=str(root), mapping={"embodiment": "metaworld_sawyer"}),
        "config mapping with no camera",
        'a config source entry whose "mapping" names only the embodiment',
        "no_camera",
        root,
    )
    assert "the mapping given in the config maps no camera" in r.detail


# ---- RLDS ---------------------------------------------------------------------------------------------


def test_rlds_defaults_are_rlds_names(tmp_path: Path, embodiment_folder: Path) -> None:
    m = SourceMapping.from_dict({"embodiment": "metaworld_sawyer"}, fmt="rlds")
    assert (m.state_key, m.action_key) == ("steps/observation/state", "steps/action")
    m = SourceMapping.from_dict({"embodiment": "metaworld_sawyer"}, fmt="lerobot_v3")
    assert (m.state_key, m.action_key) == ("observation.state", "action")

    episodes = make_episodes((5, 4))
    root = write_rlds(episodes, tmp_path / "rlds")
    sidecar = next(root.rglob(SIDECAR_NAME))
    sidecar.unlink()
    # no mapping, the robot named: cameras image -> high, wrist_image -> wrist
    got, rejected = read(SourceSpec(path=str(root), embodiment="metaworld_sawyer"))
    assert rejected == []
    assert_read_back(got, episodes)
    # no mapping, no robot named: RLDS has no dim names, so dims alone pick nothing; a spec is generated
    got, rejected = read(root, decode=False)
    assert rejected == [] and len(got) == 2
    generated = get_embodiment(got[0].embodiment)
    assert (generated.state_dim, generated.action_dim, generated.cameras) == (4, 4, ("high", "wrist"))
    assert (embodiment_folder / f"{generated.name}.json").exists()
    # a hand-written mapping that only names the robot and one camera
    sidecar.write_text(
        json.dumps({"embodiment": "metaworld_sawyer", "cameras": {"steps/observation/image": "high"}})
    )
    got, rejected = read(root)
    assert rejected == [] and [sorted(e.cameras) for e in got] == [["high"], ["high"]]
    for g, w in zip(got, episodes, strict=True):
        np.testing.assert_array_equal(g.action, w.action)


# ---- gwp inspect --------------------------------------------------------------------------------------


def test_inspect_lists_keys_and_prints_a_valid_mapping(tmp_path: Path, capsys) -> None:
    root, _ = lerobot_without_sidecar(tmp_path)
    assert gwp_inspect.main([str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    src = out["source"]
    assert (src["format"], src["episodes"], src["fps"], src["robot_type"]) == (
        "lerobot_v3",
        2,
        10,
        "metaworld_sawyer",
    )
    assert src["cameras"] == ["observation.images.top", "observation.images.wrist"]
    keys = {k["key"]: (k["shape"], k["dtype"], k["kind"]) for k in src["keys"]}
    assert keys["observation.state"] == ([4], "float32", "vector")
    assert keys["observation.images.top"] == ([64, 64, 3], "video", "camera")
    mapping = SourceMapping.from_dict(out["mapping"], fmt="lerobot_v3")
    assert mapping.embodiment == "metaworld_sawyer"
    assert mapping.cameras == {"observation.images.top": "high", "observation.images.wrist": "wrist"}
    # the human listing names the same keys and ends with the JSON mapping
    assert gwp_inspect.main([str(root)]) == 0
    text = capsys.readouterr().out
    assert "observation.images.wrist" in text and "robot_type: metaworld_sawyer" in text
    assert json.loads(text[text.index("{") :]) == out["mapping"]


def test_inspect_write_makes_an_hdf5_source_ingestible(tmp_path: Path, capsys) -> None:
    from curation.formats.hdf5_robomimic import write_robomimic_hdf5

    episodes = make_episodes((5, 4))
    path = write_robomimic_hdf5(episodes, tmp_path / "demo.hdf5")
    Path(f"{path}.{SIDECAR_NAME}").unlink()
    r = assert_refused(
        path,
        "HDF5 source with no mapping",
        "robomimic file without demo.hdf5.gwp_source.json (HDF5 has no naming conventions)",
        "invalid_<source>",
        path,
    )
    assert "gwp inspect" in r.detail

    assert gwp_inspect.main([str(path), "--embodiment", "metaworld_sawyer", "--write"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {path}.{SIDECAR_NAME}" in err
    got, rejected = read(path)
    assert rejected == []
    assert_read_back(got, episodes)
    assert gwp_inspect.main([str(path), "--write"]) == 1  # never over an existing mapping
    assert "not overwritten" in capsys.readouterr().err


def test_inspect_bad_source_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert gwp_inspect.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err


def test_spec_saved_after_the_registry_loaded_is_found_by_name(embodiment_folder: Path) -> None:
    """Another process (a Ray task generating a spec) may save one after this one loaded the registry."""
    get_embodiment("metaworld_sawyer")  # the registry is loaded
    spec = {**get_embodiment("metaworld_sawyer").to_dict(), "name": "late_arm", "id": 915}
    (embodiment_folder / "late_arm.json").write_text(json.dumps(spec))
    assert get_embodiment("late_arm").to_dict() == spec
    with pytest.raises(KeyError, match="unknown embodiment 'later_arm'"):
        get_embodiment("later_arm")
