"""One episode stream from six formats, and a rejection ledger that accounts for every input.

The same three simulated episodes are written in every registered format, found again by
auto-detection (one folder, ``discover_sources``), and read back through ``iter_episodes``:
numbers and text must come back exactly, frames exactly where the storage is lossless and
above 30 dB PSNR where it is an mp4. Then copies of those sources are broken on purpose, one
defect each; every defect must give one ledger entry naming the file, the episode and the
reason, while the other episodes still load. Input counts come from how the test built the
folders, never from the code under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.formats import FORMATS, detect_format, open_source
from curation.ingest import SourceSpec, discover_sources, iter_episodes, load
from pipelines import convert as convert_cli
from pipelines import ingest as ingest_cli
from schemas import Episode, Rejection
from tests.support.helpers import (
    LOSSLESS_FORMATS,
    assert_same_episode,
    cut_video_data,
    frames_of,
    make_episodes,
    truncate_file,
    write_all_formats,
)

SIX_FORMATS = {"lerobot_v3", "lerobot_v2", "hdf5_robomimic", "hdf5_aloha", "rlds", "raw_video"}
EPISODES = make_episodes()
N = len(EPISODES)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    return write_all_formats(EPISODES, tmp_path_factory.mktemp("sources"))


def test_registry_has_the_six_formats():
    assert set(FORMATS) == SIX_FORMATS


@pytest.mark.parametrize("fmt", sorted(SIX_FORMATS))
def test_round_trip_through_detection(written, fmt):
    path = written[fmt]
    assert detect_format(path) == fmt
    items = list(iter_episodes([path]))
    assert all(isinstance(i, Episode) for i in items), [i for i in items if isinstance(i, Rejection)]
    assert [e.length for e in items] == [e.length for e in EPISODES]
    for got, want in zip(items, EPISODES, strict=True):
        # lazy references after load: nothing decoded yet
        assert all(ref.kind != "inline" for ref in got.cameras.values()), fmt
        scores = assert_same_episode(
            got, want, lossless=fmt in LOSSLESS_FORMATS, where=f"{fmt}#{got.source_index}"
        )
        if fmt not in LOSSLESS_FORMATS:
            assert min(scores.values()) < 100.0, (
                f"{fmt}: an mp4 that is bit-exact? the frames were not re-encoded"
            )
    again = list(iter_episodes([path]))
    assert [e.episode_id for e in again] == [e.episode_id for e in items]  # stable ids
    assert len({e.episode_id for e in items}) == N


def test_decode_gives_the_same_frames_inline(written):
    lazy = list(iter_episodes([written["lerobot_v3"]]))
    decoded = list(iter_episodes([written["lerobot_v3"]], decode=True))
    for a, b in zip(lazy, decoded, strict=True):
        assert {r.kind for r in b.cameras.values()} == {"inline"}
        for role, frames in frames_of(a).items():
            np.testing.assert_array_equal(b.cameras[role].array, frames)


def test_discover_sources_finds_every_format_in_one_folder(written, tmp_path):
    root = written["hdf5_aloha"].parent  # write_all_formats puts every format under one folder
    specs = discover_sources(root)
    # robomimic's sidecar is not a source; the RLDS folder resolves to its <name>/<version> folder
    assert sorted(detect_format(s.path) for s in specs) == sorted(SIX_FORMATS)
    assert {open_source(s.path).root for s in specs} == set(written.values())
    items = list(iter_episodes(specs))
    assert len(items) == 6 * N and all(isinstance(i, Episode) for i in items)
    with pytest.raises(NotADirectoryError):
        discover_sources(root / "nope")


# ---- bad inputs ---------------------------------------------------------------------------

# name of the broken copy -> (format copied, defect, expected reason, stage, file named, episode label, index)
DEFECTS = {
    "v2_truncated": ("lerobot_v2", "truncated mp4", "bad_video", "load", "episode_000001.mp4", "episode_000001", 1),
    "v2_no_state": ("lerobot_v2", "parquet column", "missing_column", "load", "episode_000002.parquet", "episode_000002", 2),
    "raw_missing": ("raw_video", "missing mp4", "missing_video", "load", "episode_000000.json", "episode_000000", 0),
    "raw_cut": ("raw_video", "mp4 data cut", "video_too_short", "load", "episode_000002.wrist.mp4", "episode_000002", 2),
    "robo_short_images": ("hdf5_robomimic", "image/action lengths", "length_mismatch", "load", "robo_short_images.hdf5", "demo_1", 1),
    "aloha_nan": ("hdf5_aloha", "NaN action", "nan_action", "load", "episode_2.hdf5", "episode_2", 2),
}  # fmt: skip


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
        (dst / "gwp_source.json").write_text(  # a source name of its own: episode ids differ per copy
            json.dumps({**json.loads((dst / "gwp_source.json").read_text()), "source": dst.name})
        )
    else:
        shutil.copy(src, dst)
        side = json.loads(Path(f"{src}.gwp_source.json").read_text())
        Path(f"{dst}.gwp_source.json").write_text(json.dumps({**side, "source": dst.stem}))
    return dst


@pytest.fixture(scope="module")
def broken(written, tmp_path_factory) -> Path:
    """A folder of sources, each a copy of a good one with one defect, plus a folder of junk."""
    root = tmp_path_factory.mktemp("broken")
    d = _copy(written["lerobot_v2"], root / "v2_truncated")
    truncate_file(d / "videos/chunk-000/observation.images.high/episode_000001.mp4", keep=0.5)
    d = _copy(written["lerobot_v2"], root / "v2_no_state")
    table_path = d / "data/chunk-000/episode_000002.parquet"
    pq.write_table(pq.read_table(table_path).drop(["observation.state"]), table_path)
    d = _copy(written["raw_video"], root / "raw_missing")
    (d / "episode_000000.high.mp4").unlink()
    d = _copy(written["raw_video"], root / "raw_cut")
    cut_video_data(d / "episode_000002.wrist.mp4", keep=0.6)
    d = _copy(written["hdf5_robomimic"], root / "robo_short_images.hdf5")
    with h5py.File(d, "r+") as f:
        key = "data/demo_1/obs/agentview_image"
        images = f[key][:-3]
        del f[key]
        f[key] = images
    d = _copy(written["hdf5_aloha"], root / "aloha_nan")
    with h5py.File(d / "episode_2.hdf5", "r+") as f:
        f["/action"][5, 1] = np.nan
    junk = root / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset\n")
    (junk / "blob.bin").write_bytes(bytes(range(256)))
    (junk / "meta.json").write_text("{}")
    return root


def _source_of(path: str, root: Path) -> str:
    return Path(path).relative_to(root).parts[0].removesuffix(".hdf5")


def _check_ledger(items: list, broken: Path, decode: bool) -> None:
    episodes = [i for i in items if isinstance(i, Episode)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    # inputs, counted from how the folder was built: N episodes per broken copy, 1 unlistable folder
    inputs = N * len(DEFECTS) + 1
    assert len(episodes) + len(rejections) == inputs
    expected = {name: d for name, d in DEFECTS.items() if decode or d[3] != "decode"}
    assert len(rejections) == len(expected) + 1
    by_source: dict[str, list] = {}
    for r in rejections:
        r.validate()
        by_source.setdefault(_source_of(r.path, broken), []).append(r)
    junk = by_source.pop("junk")
    assert [(r.stage, r.reason, Path(r.path).name, r.episode) for r in junk] == [
        ("discover", "unknown_layout", "junk", "junk#*")
    ]
    assert set(by_source) == set(expected)
    for name, (_, _, reason, stage, file, label, index) in expected.items():
        (r,) = by_source[name]
        assert (r.stage, r.reason, Path(r.path).name) == (stage, reason, file), r
        assert r.source == name and r.detail
        if label is None:  # rejected after it loaded: named by its episode id
            ep_id = next(e.episode_id for e in iter_episodes([broken / name]) if e.source_index == index)
            assert r.episode == ep_id and f"#{index}" in r.detail and "camera wrist" in r.detail
        else:
            assert r.episode == label
    # the rest of each source still loads: exactly the indices that were not rejected
    for name, (_, _, _, stage, _, _, index) in DEFECTS.items():
        got = sorted(e.source_index for e in episodes if e.source == name)
        bad = {index} if decode or stage != "decode" else set()
        assert got == [i for i in range(N) if i not in bad], name
    if decode:
        assert all({c.kind for c in e.cameras.values()} == {"inline"} for e in episodes)


def test_bad_inputs_load_is_cheap_and_rejects_what_headers_show(broken):
    specs = discover_sources(broken)
    assert len(specs) == len(DEFECTS) + 1  # robomimic's sidecar is not a source
    _check_ledger(list(iter_episodes(specs)), broken, decode=False)


def test_bad_inputs_decode_catches_cut_video(broken):
    _check_ledger(list(iter_episodes(discover_sources(broken), decode=True)), broken, decode=True)


def test_unknown_format_and_missing_path_are_rejections(tmp_path, written):
    missing = tmp_path / "does_not_exist"
    (r,) = list(iter_episodes([missing]))
    assert (r.stage, r.reason, r.path, r.episode) == (
        "discover",
        "missing_source",
        str(missing),
        "does_not_exist#*",
    )
    junk_file = tmp_path / "junk.hdf5"
    junk_file.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # HDF5 signature, garbage after it
    (r,) = list(iter_episodes([junk_file]))
    assert r.reason in ("unknown_layout", "bad_file") and r.path == str(junk_file)
    # a wrong format named by the user is a rejection too, not an exception
    (r,) = list(iter_episodes([SourceSpec(path=str(written["hdf5_aloha"]), format="lerobot_v3")]))
    assert r.stage == "discover" and r.path.startswith(str(written["hdf5_aloha"]))


def test_load_never_raises_on_a_bad_ref(written):
    from curation.formats import open_source

    ref = open_source(written["hdf5_robomimic"]).list_episodes()[0]
    bogus = type(ref)(ref.format, ref.root, ref.path, 99, ref.source, {**ref.locator, "demo": "demo_99"})
    r = load(bogus)
    assert isinstance(r, Rejection) and r.reason == "missing_key" and r.episode == "demo_99"


# ---- command-line drivers -----------------------------------------------------------------


def test_ingest_cli_scan_counts_and_writes_ledger(broken, tmp_path, capsys):
    ledger = tmp_path / "ledger.jsonl"
    assert ingest_cli.main(["--scan", str(broken), "--decode", "--ledger", str(ledger)]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["inputs"] == N * len(DEFECTS) + 1
    assert summary["rejected"] == len(DEFECTS) + 1
    assert summary["episodes"] == summary["inputs"] - summary["rejected"]
    rows = [Rejection.from_row(json.loads(line)) for line in ledger.read_text().splitlines()]
    assert sorted(r.reason for r in rows) == sorted([d[2] for d in DEFECTS.values()] + ["unknown_layout"])
    assert "episode_000001.mp4" in err and "unknown_layout" in err


def test_convert_cli_round_trip_and_reports_rejections(written, broken, tmp_path, capsys):
    out = tmp_path / "from_rlds.hdf5"
    assert convert_cli.main([str(written["rlds"]), "--to", "hdf5_robomimic", "--out", str(out)]) == 0
    for got, want in zip(iter_episodes([out]), EPISODES, strict=True):
        assert_same_episode(got, want, lossless=True)
    path, rejected = convert_cli.convert([str(broken / "aloha_nan")], "lerobot_v2", tmp_path / "v2")
    assert [(r.reason, r.episode) for r in rejected] == [("nan_action", "episode_2")]
    got = list(iter_episodes([path]))
    assert [e.length for e in got] == [EPISODES[0].length, EPISODES[1].length]
    assert convert_cli.main([str(broken / "junk"), "--to", "rlds", "--out", str(tmp_path / "r")]) == 1
    assert "nothing to convert" in capsys.readouterr().err
    for g, want in zip(got, EPISODES[:2], strict=True):
        assert_same_episode(g, want, lossless=False)
