"""Shard planning from the work parts' metadata alone (``curation.phases.pack.plan_shards``)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from curation.config import ShardConfig
from curation.episode_samples import RAW_SCHEMA
from curation.parts import part_path, read_layout, write_part
from curation.phases.pack import ShardPlan, plan_shards

ROW_BYTES = 100 + 4 * (1 * 32 + 2 * 32)  # 100 bytes of video, a 1-step chunk


def _part(work, index: int, episodes: list[tuple[str, int]]):
    rows = [
        {
            "episode_id": ep,
            "start_frame": i,
            "video": b"v" * 100,
            "raw_action": [[0.0] * 4],
            "raw_state": [0.0],
        }
        for ep, n in episodes
        for i in range(n)
    ]
    records = [{"episode_id": ep, "samples": n} for ep, n in episodes]
    path = part_path(work, index)
    write_part(path, pa.Table.from_pylist(rows, schema=RAW_SCHEMA), records, [None] * len(records))
    return path


@pytest.fixture
def parts(tmp_path):
    # part 0: A (3 rows), B (2 rows, to be excluded), C (4 rows), E (no samples); part 1: D (5 rows)
    return [_part(tmp_path, 0, [("A", 3), ("B", 2), ("C", 4), ("E", 0)]), _part(tmp_path, 1, [("D", 5)])]


def test_the_layout_is_in_the_metadata(parts):
    records, nbytes = read_layout(parts[0])
    assert [r["samples"] for r in records] == [3, 2, 4, 0]
    assert nbytes == [ROW_BYTES] * 9


def test_shards_are_cut_at_the_target_size_skipping_excluded_episodes(parts):
    plans = plan_shards(parts, ShardConfig(target_bytes=3 * ROW_BYTES), exclude=frozenset({"B"}))
    p0, p1 = str(parts[0]), str(parts[1])
    assert plans == [
        ShardPlan(0, ((p0, 0, 3),)),  # A
        ShardPlan(1, ((p0, 5, 8),)),  # C, after the gap left by B
        ShardPlan(2, ((p0, 8, 9), (p1, 0, 2))),  # the rest of C, the start of D
        ShardPlan(3, ((p1, 2, 5),)),
    ]
    assert sum(p.rows for p in plans) == 12


def test_max_rows_and_one_big_shard(parts):
    by_rows = plan_shards(parts, ShardConfig(max_rows=5))
    assert [p.rows for p in by_rows] == [5, 5, 4]
    assert by_rows[0].pieces == ((str(parts[0]), 0, 5),)  # A and B merged into one range
    whole = plan_shards(parts, ShardConfig())
    assert whole == [ShardPlan(0, ((str(parts[0]), 0, 9), (str(parts[1]), 0, 5)))]


def test_a_part_whose_records_do_not_match_its_rows_is_refused(tmp_path):
    with pytest.raises(ValueError, match="records count 2 samples, the table has 3 rows"):
        rows = [{"episode_id": "A", "video": b"v", "raw_action": [[0.0]]}] * 3
        write_part(
            part_path(tmp_path, 0),
            pa.Table.from_pylist(rows, schema=RAW_SCHEMA),
            [{"episode_id": "A", "samples": 2}],
            [None],
        )


def test_a_shard_reads_each_row_group_once_across_a_gap(tmp_path, monkeypatch):
    """Leaving a duplicate out of the middle of a part splits it into two pieces of one shard;
    the shard task reads each row group of that part once, and writes exactly the kept rows
    in order."""
    import pyarrow.parquet as pq

    import curation.phases.pack as pack
    from curation.config import get_preset
    from curation.in_memory import curate_in_memory
    from curation.phases.statistics import merge_sketches
    from tests.support.helpers import make_episodes

    ds = curate_in_memory(make_episodes([24, 26, 28], size=64), tmp_path / "ds")
    part = part_path(ds / ".work", 0)
    records, _ = read_layout(part)
    middle = records[1]["episode_id"]
    (plan,) = plan_shards([part], ShardConfig(), exclude=frozenset({middle}))
    assert len(plan.pieces) == 2
    reads = []
    real_read = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pack.pq.ParquetFile, "read_row_group", lambda f, i, **kw: reads.append(i) or real_read(f, i, **kw)
    )
    stats = merge_sketches([part], get_preset("debug").norm, frozenset({middle}))
    info = pack.write_planned_shard(str(tmp_path / "out"), plan, stats, get_preset("debug"))
    assert reads == sorted(set(reads)) and reads
    ids = pq.read_table(tmp_path / "out" / info.name, columns=["episode_id"]).column("episode_id").to_pylist()
    assert info.rows == plan.rows == len(ids) and middle not in ids
    assert ids == [
        i for i in pq.read_table(part, columns=["episode_id"]).column("episode_id").to_pylist() if i != middle
    ]


def test_a_shard_over_several_parts_keeps_one_part_open(tmp_path, monkeypatch):
    """A shard task's memory must not grow with the parts its shard spans: it opens the parts
    one after the other, each dropped (with its row group) before the next is opened, and
    writes every row of every part in order."""
    import gc
    import weakref

    import pyarrow.parquet as pq

    import curation.phases.pack as pack
    from curation.config import get_preset
    from curation.in_memory import curate_in_memory
    from curation.phases.statistics import merge_sketches
    from tests.support.helpers import make_episodes

    parts = [
        part_path(curate_in_memory(make_episodes([20, 22], source=f"s{i}"), tmp_path / f"ds{i}") / ".work", 0)
        for i in range(3)
    ]
    (plan,) = plan_shards(parts, ShardConfig())
    assert [piece[0] for piece in plan.pieces] == [str(p) for p in parts]
    opened: list[weakref.ref] = []
    most_alive = 0

    class Counted(pack.PartRows):
        def __init__(self, path: str):
            nonlocal most_alive
            gc.collect()
            most_alive = max(most_alive, 1 + sum(r() is not None for r in opened))
            super().__init__(path)
            opened.append(weakref.ref(self))

    monkeypatch.setattr(pack, "PartRows", Counted)
    stats = merge_sketches(parts, get_preset("debug").norm)
    info = pack.write_planned_shard(str(tmp_path / "out"), plan, stats, get_preset("debug"))
    assert len(opened) == 3 and most_alive == 1
    ids = pq.read_table(tmp_path / "out" / info.name, columns=["sample_id"]).column("sample_id").to_pylist()
    want = [i for p in parts for i in pq.read_table(p, columns=["sample_id"]).column("sample_id").to_pylist()]
    assert ids == want and info.rows == len(want)


@pytest.mark.parametrize(
    ("start", "stop", "rows"), [(0, 23, 4), (3, 17, 5), (5, 10, 5), (7, 8, 100), (4, 4, 3)]
)
def test_part_rows_chunks_match_a_slice(tmp_path, start, stop, rows):
    """PartRows.chunks gives rows [start, stop) in tables of ``rows`` whatever the file's row
    groups (here 5 rows each), as a slice of the whole table would."""
    import pyarrow.parquet as pq

    from curation.phases.pack import PartRows

    table = pa.table({"i": list(range(23))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5)
    chunks = list(PartRows(str(tmp_path / "t.parquet")).chunks(start, stop, rows))
    assert [c.num_rows for c in chunks[:-1]] == [rows] * (len(chunks) - 1)
    got = [v for c in chunks for v in c.column("i").to_pylist()]
    assert got == list(range(start, stop))


def test_a_written_part_sends_the_driver_its_records_only(tmp_path):
    from curation.episode_samples import finish_part

    table = pa.Table.from_pylist(
        [{"episode_id": "A", "video": b"v", "raw_action": [[0.0]]}], schema=RAW_SCHEMA
    )
    records, sketches = [{"episode_id": "A", "samples": 1}], [b"sketch"]
    written = finish_part(7, table, records, sketches, work=str(tmp_path))
    assert written["table"] == b"" and written["sketches"] == "" and part_path(tmp_path, 7).exists()
    passed_on = finish_part(7, table, records, sketches, work=None)
    assert passed_on["table"] and passed_on["sketches"] and passed_on["records"] == written["records"]
