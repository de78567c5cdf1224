"""The curation job end to end on a mixed corpus of good and bad simulated episodes.

Crash/resume (SIGKILL of the driver, in-process and as a ``ray job submit`` job on a
``ray start --head`` cluster) is tested in tests/e2e/test_reliability.py.

Corpus (built here from Meta-World expert rollouts, nothing committed):

* source A, LeRobot v3.0: 4 good episodes (2 tasks × 2 seeds);
* source B, robomimic HDF5: a copy of one good episode (a near-duplicate across formats),
  a static clip (every frame the same), NaN actions, a 5-step episode (too short);
* source C: a folder that is no dataset at all (unknown layout).
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from curation.formats.hdf5_robomimic import write_robomimic_hdf5
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.pipeline import CurateJob, job_from_dict, run
from curation.shards import read_manifest
from schemas import FrameRef, Manifest, Sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from policy.envs import MetaWorldConfig, rollout_expert

    root = tmp_path_factory.mktemp("corpus")
    cfg = MetaWorldConfig(image_size=64, steps_after_success=4)
    good = []
    for task in ("drawer-open-v3", "button-press-topdown-v3"):
        episodes = [ep for ep in (rollout_expert(task, seed, cfg) for seed in range(4)) if ep is not None]
        good += episodes[:2]
    assert len(good) == 4
    write_lerobot_v3(good, root / "lerobot", repo_id="tests/good", codec="h264")

    frozen = good[1].cameras["high"].array[:1]
    static = good[1].with_(
        cameras={
            r: FrameRef(kind="inline", array=np.repeat(frozen, good[1].length, 0)) for r in ("high", "wrist")
        },
        action=(good[1].action * 0.5).astype(np.float32),
    )
    nan = good[2].with_(action=good[2].action.copy())
    nan.action[3, 1] = np.nan
    short = good[3].with_(
        action=good[3].action[:5],
        state=good[3].state[:5],
        timestamps=good[3].timestamps[:5],
        cameras={r: FrameRef(kind="inline", array=ref.array[:5]) for r, ref in good[3].cameras.items()},
    )
    write_robomimic_hdf5([good[0], static, nan, short], root / "bad.hdf5")
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a dataset")
    return {"lerobot": root / "lerobot", "hdf5": root / "bad.hdf5", "junk": root / "junk"}


def make_job(corpus, out: Path, **run_kw) -> CurateJob:
    return job_from_dict(
        {
            "sources": [str(corpus["lerobot"]), str(corpus["hdf5"]), str(corpus["junk"])],
            "out": str(out),
            "curation": {"preset": "debug"},
            "run": {"progress": False, "num_cpus": 2, **run_kw},
        }
    )


@pytest.fixture(scope="module")
def curated(corpus, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curated") / "ds"
    run(make_job(corpus, out, episodes_per_task=2))
    return out


def test_accounting_balances_stage_by_stage(curated):
    m = read_manifest(curated)
    c = m.counts
    assert c["episodes_in"] == 9  # 4 + 4 + 1 unlistable source
    assert c["episodes_with_samples"] == 4
    assert c["episodes_in"] == c["episodes_with_samples"] + c["episodes_rejected"]
    assert c["windows_in"] == c["samples"] + c["windows_rejected"]
    sc = m.stage_counts
    for stage, k in sc.items():
        assert k["in"] == k["out"] + k["rejected"], stage
    chain = ["ingest", "filter", "dedup", "decode", "window"]
    for a, b in itertools.pairwise(chain):
        assert sc[a]["out"] == sc[b]["in"], (a, b)
    assert sc["ingest"]["in"] == c["episodes_in"]
    assert sc["window"]["out"] == c["episodes_with_samples"]
    # every episode-level rejection is in the ledger with file and reason
    episode_rej = [r for r in m.rejections if r.window < 0]
    assert len(episode_rej) == c["episodes_rejected"]
    assert sum(s.episodes for s in m.sources) == c["episodes_in"]
    assert [s.episodes for s in m.sources] == [4, 4, 1]  # lerobot, hdf5, the unlistable folder


def test_a_duplicate_is_decoded_once_but_leaves_no_rows(curated):
    """Dedup runs after the one pass over each episode: the duplicate's rows must not reach
    the shards or the statistics, and its windows are not counted."""
    import pyarrow.parquet as pq

    m = read_manifest(curated)
    dup = next(r for r in m.rejections if r.reason == "near_duplicate")
    ids = set()
    for path in (curated / "data").glob("shard-*.parquet"):
        ids |= set(pq.read_table(path, columns=["episode_id"]).column("episode_id").to_pylist())
    assert dup.episode not in ids
    assert len(ids) == m.counts["episodes_with_samples"]
    assert not [r for r in m.rejections if r.episode == dup.episode and r.reason != "near_duplicate"]
    from curation.parts import read_part

    steps = dup_rows = 0
    for part in sorted((curated / ".work" / "parts").glob("part-*.parquet")):
        rows = read_part(part)[0].select(["episode_id", "valid_steps"]).to_pylist()
        dup_rows += sum(1 for r in rows if r["episode_id"] == dup.episode)
        steps += sum(r["valid_steps"] for r in rows if r["episode_id"] != dup.episode)
    assert dup_rows > 0  # it went through the one pass like any other episode
    assert m.stats["metaworld_sawyer"].action.count == steps  # the statistics leave it out too


def test_inputs_are_counted_under_the_configured_source_path(tmp_path):
    """An RLDS reader resolves to ``<name>/<version>`` inside the configured folder; the
    manifest's lineage must still count its episodes under the configured path."""
    from curation.formats.rlds_write import write_rlds
    from curation.phases.discover import discover_all
    from tests.support.helpers import make_episodes

    version = write_rlds(make_episodes([12, 14, 16]), tmp_path / "rlds")
    assert version != tmp_path / "rlds"
    write_lerobot_v3(make_episodes([12, 13]), tmp_path / "lerobot")
    job = job_from_dict(
        {"sources": [str(tmp_path / "rlds"), str(tmp_path / "lerobot")], "out": str(tmp_path / "out")}
    )
    work = tmp_path / "work"
    work.mkdir()
    found = discover_all(job, work)
    assert found["source_inputs"] == {str(tmp_path / "rlds"): 3, str(tmp_path / "lerobot"): 2}
    assert found["source_formats"] == {
        str(tmp_path / "rlds"): "rlds",
        str(tmp_path / "lerobot"): "lerobot_v3",
    }
    assert len(found["refs"]) == 5


def test_bad_inputs_are_caught_by_the_right_stage(curated):
    m = read_manifest(curated)
    reasons = Counter((r.stage, r.reason) for r in m.rejections if r.window < 0)
    assert reasons[("filter.duplicate", "near_duplicate")] == 1
    assert reasons[("filter.static_video", "static_video")] == 1
    assert reasons[("filter.length", "too_short")] == 1
    assert sum(n for (stage, reason), n in reasons.items() if "nan" in reason) == 1
    unknown = [r for r in m.rejections if r.reason == "unknown_layout"]
    assert len(unknown) == 1 and unknown[0].path.endswith("junk")
    static = next(r for r in m.rejections if r.reason == "static_video")
    assert static.path.endswith("bad.hdf5") and static.detail
    dup = next(r for r in m.rejections if r.reason == "near_duplicate")
    assert "near-duplicate of episode" in dup.detail


def test_shards_load_with_datasets_and_validate(curated):
    import datasets

    files = sorted(str(p) for p in (curated / "data").glob("shard-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    m = read_manifest(curated)
    assert len(ds) == m.counts["samples"] > 0
    for row in ds:
        sample = Sample.from_row(row).validate()
        assert sample.action.shape == (8, 32)  # debug preset: p = 8
        assert sample.action_mask[:4].all() and not sample.action_mask[4:].any()
        assert "text_embedding" not in row  # instructions are embedded once, beside the shards
    ids = ds["sample_id"]
    assert len(set(ids)) == len(ids)


def test_normalised_actions_use_the_quantile_map(curated):
    import pyarrow.parquet as pq

    m = read_manifest(curated)
    st = m.stats["metaworld_sawyer"].action
    table = pq.read_table(curated / "data" / "shard-00000.parquet")
    actions = np.asarray(table.column("action").to_pylist(), dtype=np.float32)[..., :4].reshape(-1, 4)
    # q01 -> -1 and q99 -> +1: about 1 % of values fall outside [-1, 1] on each side
    for d in range(4):
        if st.q99[d] - st.q01[d] > 1e-3:
            frac = float(np.mean(np.abs(actions[:, d]) > 1.0 + 1e-6))
            assert frac < 0.1, (d, frac)


def test_rerun_skips_finished_work(curated, corpus):
    before = {p.name: p.stat().st_mtime_ns for p in (curated / "data").glob("*.parquet")}
    m = run(make_job(corpus, curated, episodes_per_task=2))
    after = {p.name: p.stat().st_mtime_ns for p in (curated / "data").glob("*.parquet")}
    assert before == after and isinstance(m, Manifest)


def test_bad_config_names_the_field(corpus, tmp_path):
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run: unknown field 'worker'|run\.worker"):
        job_from_dict({"sources": ["x"], "out": str(tmp_path), "run": {"worker": 3}})
    with pytest.raises(ConfigError, match="did you mean 'debug'"):
        job_from_dict({"sources": ["x"], "out": str(tmp_path), "curation": {"preset": "debgu"}})


def _sketch_of(chunk, k: int) -> bytes:
    from curation.stages.sketch import QuantileSketch

    return QuantileSketch(chunk.shape[1], k).update(chunk).to_bytes()


def test_quantiles_merged_across_ray_tasks_are_within_half_a_percent(ray_local):
    """q01/q99 from sketches built in separate Ray tasks and merged: ≤ 0.5 % rank error."""
    import ray

    from curation.stages.sketch import QuantileSketch

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.normal(size=(600_000, 2)), rng.standard_cauchy(size=(600_000, 2))], axis=0
    )  # 1.2 M rows, a light- and a heavy-tailed mixture per dim
    values[:, 1] = np.round(values[:, 1], 1)  # and a discrete-ish dim
    task = ray.remote(num_cpus=0.5)(_sketch_of)
    parts = ray.get([task.remote(chunk, 1024) for chunk in np.array_split(values, 8)])
    merged = QuantileSketch.from_bytes(parts[0])
    for blob in parts[1:]:
        merged.merge(QuantileSketch.from_bytes(blob))
    assert merged.n == len(values)
    for q in (0.01, 0.99):
        est = merged.quantile(q)
        for d in range(values.shape[1]):
            col = np.sort(values[:, d])
            lo = np.searchsorted(col, est[d], side="left") / len(col)
            hi = np.searchsorted(col, est[d], side="right") / len(col)
            rank_error = 0.0 if lo <= q <= hi else min(abs(q - lo), abs(q - hi))
            assert rank_error <= 0.005, (q, d, rank_error)


def test_task_size_gives_every_cpu_a_run_of_consecutive_episodes():
    from curation.phases.discover import task_size

    assert task_size(16, 64, 2) == 16  # long runs: one decoder reads a packed file front to back
    assert task_size(16, 16, 2) == 8  # but every CPU gets work
    assert task_size(16, 3, 2) == 2
    assert task_size(16, 1, 8) == 1
    assert task_size(0, 10, 2) == 1


def test_statistics_are_the_episodes_sketches_merged_in_order(curated):
    """The statistics come from the sketches the episode tasks stored, not from re-reading
    rows: recomputing them from the parts' rows (one sketch per episode, in order, the
    near-duplicate left out) gives exactly the manifest's figures."""
    from curation.parts import read_part
    from curation.stages.stats import raw_rows_accumulator

    m = read_manifest(curated)
    dup = {r.episode for r in m.rejections if r.reason == "near_duplicate"}
    merged = None
    for part in sorted((curated / ".work" / "parts").glob("part-*.parquet")):
        table, records = read_part(part)
        pos = 0
        for rec in records:
            rows = table.slice(pos, rec["samples"])
            pos += rec["samples"]
            if rec["samples"] and rec["episode_id"] not in dup:
                acc = raw_rows_accumulator(rows, 1 << 20)  # large k: no compaction, exact
                merged = acc if merged is None else merged.merge(acc)
        assert pos == table.num_rows
    exact = merged.finalize(_norm(m))
    got = m.stats["metaworld_sawyer"]
    assert got.action.count == exact.action.count and got.state.count == exact.state.count
    np.testing.assert_allclose(got.action.mean, exact.action.mean, rtol=1e-9)
    np.testing.assert_allclose(got.action.min, exact.action.min)
    np.testing.assert_allclose(got.state.max, exact.state.max)


def _norm(m: Manifest):
    from curation.config import preset_with_overrides

    return preset_with_overrides(m.config["curation"]).norm


def test_how_the_job_runs_does_not_change_what_it_writes(curated, corpus, ray_local, tmp_path):
    """Another cut into parts (one episode per Ray task instead of two) writes shards with the
    same rows and the same statistics: rows, records and sketches are in discovery order."""
    from curation.shards import content_digest

    other = tmp_path / "ds"
    m = run(make_job(corpus, other, episodes_per_task=1))
    assert len(list((other / ".work" / "parts").glob("part-*.parquet"))) == 8  # 4 + 4 listed episodes
    assert content_digest(other) == content_digest(curated)
    assert m.stats == read_manifest(curated).stats
    assert m.counts == read_manifest(curated).counts
