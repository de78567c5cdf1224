"""Episode identity (issue #15): ids come from what the data is, never from what it is called.

* two datasets from two separate ``gwp generate-sim`` runs whose folders share a name,
  curated together by one ``gwp curate``: every episode of both in the output, ids distinct;
* one dataset given twice (the same path twice, and a byte copy elsewhere): read once, each
  copy one ``duplicate_source`` ledger line, the counts balance;
* output written under schema 1 refused by curation (manifest, shards, ``.work``), the
  training-data loader and publish, each naming the file and both versions;
* the fingerprint itself, and every reader's ids following it.

Each end-to-end case records a row for RELIABILITY.md (``tests/support/faults.py:Recorder``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.formats import open_source
from curation.formats.fingerprint import FULL_BYTES, dataset_fingerprint
from curation.formats.lerobot_v3 import LeRobotV3Reader
from curation.ingest import iter_episodes
from curation.shards import file_sha256, read_manifest
from pipelines import cli, generate_sim
from schemas import SCHEMA_VERSION, Episode, Rejection, SchemaVersionError, episode_id_for
from tests.support.faults import Recorder
from tests.support.helpers import make_episodes, write_all_formats

REC = Recorder()
GROUP = "identity"
OLD = "1.0"  # the schema before ids changed meaning


def generate(out: Path, task: str) -> Path:
    argv = ["--tasks", task, "--episodes-per-task", "2", "--image-size", "32", "--codec", "h264"]
    assert generate_sim.main([*argv, "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def sims(tmp_path_factory) -> dict[str, Path]:
    """Two generate-sim datasets in folders of the same name (``a/metaworld``, ``b/metaworld``)."""
    root = tmp_path_factory.mktemp("sims")
    return {
        "drawer": generate(root / "a" / "metaworld", "drawer-open-v3"),
        "button": generate(root / "b" / "metaworld", "button-press-topdown-v3"),
    }


def curate(sources: list[Path], out: Path) -> int:
    """``gwp curate`` as a user types it (in-process Ray, already started by ``ray_local``)."""
    argv = ["curate", *[a for s in sources for a in ("--source", str(s))], "--out", str(out)]
    return cli.main([*argv, "--preset", "debug", "--no-progress"])


def shard_rows(out: Path) -> list[dict]:
    m = read_manifest(out)
    cols = ["episode_id", "sample_id", "instruction"]
    return [r for s in m.shards for r in pq.read_table(out / s.name, columns=cols).to_pylist()]


def balanced(m) -> bool:
    c = m.counts
    episode_rej = [r for r in m.rejections if r.window < 0]
    return (
        c["episodes_in"] == c["episodes_with_samples"] + c["episodes_rejected"]
        and len(episode_rej) == c["episodes_rejected"]
        and sum(s.episodes for s in m.sources) == c["episodes_in"]
        and all(k["in"] == k["out"] + k["rejected"] for k in m.stage_counts.values())
    )


# ---- 1. two datasets, one name ------------------------------------------------------------------


def test_two_generated_datasets_with_one_name_keep_every_episode_with_distinct_ids(sims, ray_local, tmp_path):
    a, b = sims["drawer"], sims["button"]
    readers = {k: LeRobotV3Reader(p) for k, p in sims.items()}
    # the collision this guards against: both default to the same source name
    assert readers["drawer"].source == readers["button"].source
    out = tmp_path / "curated"
    code = curate([a, b], out)
    m = read_manifest(out)
    rows = shard_rows(out)
    episodes = {r["episode_id"] for r in rows}
    want = {
        episode_id_for(reader.dataset_id, ref.locator["data"], ref.index)
        for reader in readers.values()
        for ref in reader.list_episodes()
    }
    by_task = {
        t: {r["episode_id"] for r in rows if r["instruction"] == t} for t in {r["instruction"] for r in rows}
    }
    ok = (
        code == 0
        and m.counts["episodes_in"] == 4
        and m.counts["episodes_with_samples"] == 4
        and episodes == want
        and len(want) == 4
        and len({r["sample_id"] for r in rows}) == len(rows)
        and sorted(len(v) for v in by_task.values()) == [2, 2]
        and balanced(m)
    )
    REC.add(
        GROUP,
        "two datasets, one folder name",
        "two `gwp generate-sim` runs (drawer-open, button-press) into a/metaworld and b/metaworld, one `gwp curate`",
        "exit 0; all 4 episodes in the shards, 4 distinct episode ids, every sample id distinct",
        f"exit {code}; {m.counts['episodes_with_samples']}/{m.counts['episodes_in']} episodes with samples, "
        f"{len(episodes)} episode ids, {len({r['sample_id'] for r in rows})} sample ids in {len(rows)} rows",
        ok,
    )
    assert code == 0
    assert m.counts["episodes_in"] == m.counts["episodes_with_samples"] == 4, m.rejections
    assert episodes == want and len(want) == 4
    assert len({r["sample_id"] for r in rows}) == len(rows)
    assert sorted(len(v) for v in by_task.values()) == [2, 2]
    assert balanced(m)


# ---- 2. one dataset given twice ------------------------------------------------------------------


def test_one_dataset_given_twice_and_copied_is_read_once_with_a_ledger_line_per_copy(
    sims, ray_local, tmp_path
):
    a = sims["drawer"]
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(a, copy)
    out = tmp_path / "curated"
    code = curate([a, a, copy], out)
    m = read_manifest(out)
    rows = shard_rows(out)
    dups = sorted((r for r in m.rejections if r.reason == "duplicate_source"), key=lambda r: r.path)
    per_episode = {e: sum(1 for r in rows if r["episode_id"] == e) for e in {r["episode_id"] for r in rows}}
    # an episode read twice would repeat its sample ids (same dataset id, path, index, window)
    samples_once = len({r["sample_id"] for r in rows}) == len(rows) == m.counts["samples"]
    ok = (
        code == 0
        and m.counts["episodes_in"] == 4  # 2 episodes + one rejected input per extra copy
        and m.counts["episodes_with_samples"] == 2
        and len(per_episode) == 2
        and samples_once
        and [(r.stage, r.path) for r in dups] == sorted([("discover", str(a)), ("discover", str(copy))])
        and all(str(a) in r.detail for r in dups)
        and [s.episodes for s in m.sources] == [3, 1]
        and balanced(m)
    )
    REC.add(
        GROUP,
        "one dataset given twice, and a copy",
        "the same generate-sim folder as --source twice, and a byte copy of it at another path",
        "each episode once in the shards; 2 ledger lines discover/duplicate_source naming the first copy; "
        "inputs = outputs + rejected",
        f"exit {code}; {len(per_episode)} episodes in the shards; ledger: "
        + "; ".join(f"{r.stage}/{r.reason} {Path(r.path).name}: {r.detail}" for r in dups),
        ok,
    )
    assert code == 0
    assert len(per_episode) == 2 and samples_once
    assert m.counts["episodes_in"] == 4 and m.counts["episodes_with_samples"] == 2
    assert [(r.stage, r.path) for r in dups] == sorted([("discover", str(a)), ("discover", str(copy))])
    assert all(str(a) in r.detail for r in dups)
    assert "given twice" in next(r.detail for r in dups if r.path == str(a))
    assert "a copy of" in next(r.detail for r in dups if r.path == str(copy))
    assert [s.path for s in m.sources] == [str(a), str(copy)] and [s.episodes for s in m.sources] == [3, 1]
    assert balanced(m)


def test_ingest_reads_a_repeated_dataset_once_without_and_with_ray(sims, ray_local, tmp_path):
    from curation.ingest import item_from_row, read_episodes

    a = sims["button"]
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    for got in (
        list(iter_episodes([a, copy, a])),
        [item_from_row(r) for r in read_episodes([a, copy, a]).take_all()],
    ):
        episodes = [x for x in got if isinstance(x, Episode)]
        rejected = [x for x in got if isinstance(x, Rejection)]
        assert len(episodes) == 2 and len({e.episode_id for e in episodes}) == 2
        assert sorted(r.path for r in rejected) == sorted([str(copy), str(a)])
        assert {(r.stage, r.reason) for r in rejected} == {("discover", "duplicate_source")}
        assert len(got) == 2 + 2  # inputs: 2 episodes + one per extra copy


# ---- 3. output of the old schema -----------------------------------------------------------------


def _age(out: Path, manifest: bool = True, shards: bool = True) -> None:
    """Make a curated folder look written by schema 1 (the manifest keeps listing the shards
    with their new sizes and hashes, so that only the version is wrong)."""
    mpath = out / "meta" / "manifest.json"
    data = json.loads(mpath.read_text()) if mpath.exists() else None
    if shards:
        for path in sorted((out / "data").glob("shard-*.parquet")):
            table = pq.read_table(path)
            meta = {**(table.schema.metadata or {}), b"gwp_schema_version": OLD.encode()}
            pq.write_table(table.replace_schema_metadata(meta), path)
        for entry in data["shards"] if data else []:
            path = out / entry["name"]
            entry.update(bytes=path.stat().st_size, sha256=file_sha256(path))
    if data:
        mpath.write_text(json.dumps({**data, "schema_version": OLD if manifest else data["schema_version"]}))


def test_output_of_the_old_schema_is_refused_naming_file_and_versions(sims, ray_local, tmp_path, capsys):
    from curation.publish import dataset_files
    from pretrain.data import ShardSet

    fresh = tmp_path / "fresh"
    assert curate([sims["button"]], fresh) == 0
    version = rf"'{OLD}'.*'{SCHEMA_VERSION}'"
    observed = []

    # a finished dataset of schema 1: curating into it, loading it for training, publishing it
    old = tmp_path / "old"
    shutil.copytree(fresh, old)
    _age(old)
    capsys.readouterr()
    code = curate([sims["button"]], old)
    err = capsys.readouterr().err.strip()
    observed.append(f"curate into it: exit {code}: {err}")
    assert code == 1 and len(err.splitlines()) == 1
    assert "manifest.json" in err and f"'{OLD}'" in err and f"'{SCHEMA_VERSION}'" in err
    with pytest.raises(SchemaVersionError, match=rf"manifest\.json.*{version}") as info:
        ShardSet.open(old)
    observed.append(f"training loader: {info.value}")
    with pytest.raises(SchemaVersionError, match=rf"manifest\.json.*{version}") as info:
        dataset_files(old)
    observed.append(f"publish: {info.value}")

    # only the shards are old (a manifest rewritten by hand): the loader and publish name the shard
    shards_only = tmp_path / "shards_only"
    shutil.copytree(fresh, shards_only)
    _age(shards_only, manifest=False)
    with pytest.raises(SchemaVersionError, match=rf"shard-00000\.parquet.*{version}"):
        ShardSet.open(shards_only)
    with pytest.raises(SchemaVersionError, match=rf"shard-00000\.parquet.*{version}"):
        dataset_files(shards_only)

    # an interrupted schema-1 run: shards in data/ and no manifest; then only its .work stamp
    partial = tmp_path / "partial"
    shutil.copytree(fresh, partial)
    (partial / "meta" / "manifest.json").unlink()
    _age(partial, manifest=False)
    code = curate([sims["button"]], partial)
    err = capsys.readouterr().err.strip()
    observed.append(f"resume over old shards: exit {code}: {err}")
    assert code == 1 and "shard-00000.parquet" in err and f"'{OLD}'" in err
    for shard in (partial / "data").glob("shard-*.parquet"):
        shard.unlink()
    work = partial / ".work"
    work.mkdir(exist_ok=True)
    (work / "digest").write_text("0123456789abcdef work-layout 4")  # schema 1 wrote no schema field
    code = curate([sims["button"]], partial)
    err = capsys.readouterr().err.strip()
    observed.append(f"resume over an old .work: exit {code}: {err}")
    assert code == 1 and ".work/digest" in err and f"'{OLD}'" in err
    assert (work / "digest").exists()  # refused, not wiped

    REC.add(
        GROUP,
        "output of schema 1",
        "a curated folder's manifest and shards stamped schema 1.0; an interrupted 1.0 run (shards, .work)",
        f"refused, naming the file, the found ('{OLD}') and expected ('{SCHEMA_VERSION}') version: "
        "curate (exit 1, one line), training loader, publish",
        " | ".join(observed),
        True,
    )


# ---- 4. the fingerprint --------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


def test_fingerprint_is_stable_across_runs_and_copies(tmp_path):
    big = bytes(range(256)) * ((FULL_BYTES * 3) // 256)
    files = {"meta/info.json": b'{"a": 1}', "data/chunk-000/file-000.parquet": big}
    a = _tree(tmp_path / "a" / "ds", files)
    b = _tree(tmp_path / "b" / "other_name", files)
    assert dataset_fingerprint("x", a) == dataset_fingerprint("x", a) == dataset_fingerprint("x", b)
    (a / ".work").mkdir()
    (a / ".work" / "part-0.parquet").write_bytes(b"scratch")  # hidden: no part of the dataset
    assert dataset_fingerprint("x", a) == dataset_fingerprint("x", b)
    (a / "gwp_source.json").write_text('{"embodiment": "aloha"}')  # how to read it, not what it is
    assert dataset_fingerprint("x", a) == dataset_fingerprint("x", b)
    assert dataset_fingerprint("x", a) != dataset_fingerprint("y", a)  # another reading of the bytes


@pytest.mark.parametrize("where", ["small file", "head", "sampled block", "tail", "size", "rename", "extra"])
def test_fingerprint_differs_for_different_content(tmp_path, where):
    big = bytearray(bytes(range(256)) * ((FULL_BYTES * 3) // 256))
    files = {"meta/info.json": b'{"a": 1}', "data/file-000.bin": bytes(big)}
    base = dataset_fingerprint("x", _tree(tmp_path / "base", files))
    edited = dict(files)
    if where == "small file":
        edited["meta/info.json"] = b'{"a": 2}'
    elif where in ("head", "tail", "sampled block"):
        # a byte the bounded read covers: the first block, the last one, and one of the sampled ones
        from curation.formats.fingerprint import EDGE_BYTES, SAMPLE_BYTES, SAMPLES

        step = (len(big) - 2 * EDGE_BYTES - SAMPLE_BYTES) // (SAMPLES + 1)
        at = {"head": 10, "tail": len(big) - 10, "sampled block": EDGE_BYTES + 5 * step + 7}[where]
        big[at] ^= 0xFF
        edited["data/file-000.bin"] = bytes(big)
    elif where == "size":
        edited["data/file-000.bin"] = bytes(big) + b"\0"
    elif where == "rename":
        edited = {"meta/info.json": files["meta/info.json"], "data/file-001.bin": files["data/file-000.bin"]}
    else:
        edited["meta/tasks.jsonl"] = b"{}"
    assert dataset_fingerprint("x", _tree(tmp_path / "edited", edited)) != base


def test_fingerprint_of_an_unreadable_file_is_an_id_not_an_error(tmp_path):
    root = _tree(tmp_path / "ds", {"a.bin": b"1"})
    gone = root / "b.bin"  # listed, then gone before it was read
    one = dataset_fingerprint("x", root, [root / "a.bin", gone])
    assert one == dataset_fingerprint("x", root, [root / "a.bin", gone]) != dataset_fingerprint("x", root)


def _ids(path: Path, fmt: str) -> list[str]:
    reader = open_source(path, fmt)
    return [reader.load(ref).episode_id for ref in reader.refs()]


def test_every_reader_takes_ids_from_the_content_not_the_name(tmp_path):
    """Two datasets of different content under one name get disjoint ids in every format; a
    byte copy at another path (another name) gets the same ids."""
    one = make_episodes((9, 10), size=32, seed=0)
    two = make_episodes((9, 10), size=32, seed=1)
    paths_one = write_all_formats(one, tmp_path / "one" / "ds")
    paths_two = write_all_formats(two, tmp_path / "two" / "ds")
    for fmt, p1 in paths_one.items():
        p2 = paths_two[fmt]
        copy = tmp_path / "copy" / f"{fmt}_renamed{p1.suffix}"
        copy.parent.mkdir(exist_ok=True)
        if p1.is_dir():
            shutil.copytree(p1, copy)
        else:  # a single file, with the mapping sidecar beside it
            shutil.copy(p1, copy)
            shutil.copy(f"{p1}.gwp_source.json", f"{copy}.gwp_source.json")

        first, second, copied = (_ids(p, fmt) for p in (p1, p2, copy))
        assert len(set(first)) == 2, fmt
        assert not set(first) & set(second), f"{fmt}: two datasets share episode ids"
        assert first == copied, f"{fmt}: a byte copy got other ids"
        assert (
            open_source(p1, fmt).dataset_id
            == open_source(copy, fmt).dataset_id
            != open_source(p2, fmt).dataset_id
        )
