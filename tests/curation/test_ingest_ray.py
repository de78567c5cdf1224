"""``read_episodes`` on Ray Data: a mixed folder of all six formats in one in-process job.

Ray is started in-process with ``address="local"`` (a ``RAY_ADDRESS`` in the environment
must not attach the test to somebody's cluster), 2 CPUs and no dashboard. On Ray 2.60 the
first ``ray.init`` writes ``~/.ray/auth_token`` and turns token authentication on; an
in-process cluster and its driver read the same file, so nothing has to be passed here (the
token matters for clients of a cluster started elsewhere: ``ray job submit``, ``RAY_ADDRESS``).
The pipeline's stages ask for fractional CPUs (discover 0.25, load 0.5), so they never
reserve the whole 2-core machine (ARCHITECTURE.md, "Pitfalls the code relies on").

The StreamItem rows must reach Arrow with one fixed schema in every block — a block of
only rejections has an all-null ``episode`` column, which Arrow cannot type by inference —
so the test checks each block's schema and writes the dataset to Parquet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.formats import detect_format
from curation.ingest import (
    STREAM_ITEM_SCHEMA,
    discover_sources,
    item_from_row,
    item_row,
    items_table,
    iter_episodes,
    read_episodes,
)
from schemas import Episode, Rejection
from tests.support.helpers import (
    LOSSLESS_FORMATS,
    assert_same_episode,
    cut_video_data,
    make_episodes,
    write_all_formats,
)

EPISODES = make_episodes()
N = len(EPISODES)


def test_items_table_has_the_fixed_schema_without_ray():
    rej = Rejection("load", "bad_video", "/x/a.mp4", "a#1", "cut", "src")
    only_rejections = items_table([rej, rej])  # all-null episode column: typed by the schema
    assert only_rejections.schema == STREAM_ITEM_SCHEMA
    mixed = items_table([EPISODES[0], rej])
    assert mixed.schema == STREAM_ITEM_SCHEMA
    back = [item_from_row(r) for r in mixed.to_pylist()]
    assert back[0] == EPISODES[0] and back[1] == rej  # inline frames survive as bytes + shape
    assert item_from_row(item_row(EPISODES[1])) == EPISODES[1]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """All six formats, a junk folder, and a raw-video copy whose mp4 data is cut behind its header."""
    root = tmp_path_factory.mktemp("mixed")
    written = write_all_formats(EPISODES, root)
    shutil.copytree(written["raw_video"], root / "raw_cut")
    (root / "raw_cut" / "gwp_source.json").write_text(
        '{"embodiment": "metaworld_sawyer", "source": "raw_cut"}'
    )
    cut_video_data(root / "raw_cut" / "episode_000001.high.mp4")
    (root / "junk").mkdir()
    (root / "junk" / "readme.txt").write_text("nothing to see\n")
    return root


def test_read_episodes_mixed_folder_one_job(ray_local, mixed, tmp_path):
    ray = ray_local
    specs = discover_sources(mixed)
    fmt_of = {s.path: detect_format(s.path) for s in specs if Path(s.path).name != "junk"}
    assert len(fmt_of) == 7 and len(set(fmt_of.values())) == 6  # six formats + the raw-video copy

    ds = read_episodes(specs, decode=True).materialize()
    tables = ray.get(ds.to_arrow_refs())
    assert tables and all(t.schema == STREAM_ITEM_SCHEMA for t in tables)  # every block, same schema
    items = [item_from_row(r) for t in tables for r in t.to_pylist()]

    # inputs counted from the folder's construction: N per source, 1 unlistable folder
    episodes = [i for i in items if isinstance(i, Episode)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert len(items) == 7 * N + 1
    # the cut mp4 is found at load: each step's frame is looked up by its time in the file's
    # packets (no decoding), and the frames past the cut have none
    assert sorted((r.stage, r.reason, Path(r.path).name) for r in rejections) == [
        ("discover", "unknown_layout", "junk"),
        ("load", "video_too_short", "episode_000001.high.mp4"),
    ]
    # the same episodes as the in-process path, which does not decode
    lazy_ids = {i.episode_id for i in iter_episodes(specs) if isinstance(i, Episode)}
    assert len(lazy_ids) == 7 * N - 1
    assert {e.episode_id for e in episodes} == lazy_ids

    for ep in episodes:
        fmt = next(f for p, f in fmt_of.items() if ep.source_path.startswith(p))
        assert {c.kind for c in ep.cameras.values()} == {"inline"}
        assert_same_episode(ep, EPISODES[ep.source_index], lossless=fmt in LOSSLESS_FORMATS, where=fmt)

    # downstream Arrow consumers: the rows write to Parquet and read back with the schema
    ds.write_parquet(str(tmp_path / "stream"))
    table = pq.read_table(tmp_path / "stream")
    assert table.num_rows == len(items)
    assert table.schema.remove_metadata() == STREAM_ITEM_SCHEMA


def test_ingest_cli_on_ray(ray_local, mixed, tmp_path, capsys):
    import json

    from pipelines import ingest as ingest_cli

    ledger = tmp_path / "ledger.jsonl"
    assert ingest_cli.main(["--ray", "--scan", str(mixed), "--decode", "--ledger", str(ledger)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inputs"], summary["episodes"], summary["rejected"]) == (7 * N + 1, 7 * N - 1, 2)
    assert summary["frames"] == 7 * sum(e.length for e in EPISODES) - EPISODES[1].length
    assert sorted(json.loads(line)["reason"] for line in ledger.read_text().splitlines()) == [
        "unknown_layout",
        "video_too_short",
    ]


def test_warm_workers_import_the_episode_stack(ray_local):
    """curation.warm: one import task per CPU, each importing every module a phase-2 task
    needs (all installed here); a module that cannot be imported is skipped, not fatal."""
    from curation.warm import MODULES, import_modules, warm_workers

    assert ray_local.get(warm_workers(2, 1.0)) == [len(MODULES)] * 2
    assert import_modules(("json", "no_such_module_gwp")) == 1
