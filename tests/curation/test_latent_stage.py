"""Curation's latent stage (curation/latents.py): every sample's frames through the codec once, each
sample either encoded or rejected alone, the accounting kept (inputs = outputs + rejected).

The codec here is a torch-free stand-in with the LatentEncoder interface (8×8 mean pooling of the
frames, [N, F, H, W, 3] → [N, 3, F, H/8, W/8]) that refuses "poisoned" samples: those whose frames
hash to 0 mod 4, a fixed property of the data that the test computes on its own, so which samples
must fail is known without asking the stage. The Ray job runs it in its actor pool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.config import get_preset
from curation.episode_samples import assemble_part, episode_sample_rows, episode_table
from curation.latents import apply_latents, encode_rows
from curation.phases.dedup import settle
from curation.stages.stats import raw_rows_accumulator
from schemas.frames import decode_sample_frames
from schemas.latents import LatentConfig, latents_from_bytes
from tests.support.helpers import make_episodes, write_all_formats


def poisoned(frames_FHWC: np.ndarray) -> bool:
    return int(hashlib.sha256(frames_FHWC.tobytes()).hexdigest(), 16) % 4 == 0


def pool(frames_NFHWC: np.ndarray) -> np.ndarray:
    n, f, h, w, _ = frames_NFHWC.shape
    x = frames_NFHWC.reshape(n, f, h // 8, 8, w // 8, 8, 3).mean(axis=(3, 5))
    return x.transpose(0, 4, 1, 2, 3).astype(np.float32)


class PoolEncoder:
    """8×8 mean pooling that raises on a batch holding a poisoned sample (``poison``: which to refuse)."""

    identity: ClassVar[dict] = {
        "codec": "pool",
        "key": "pool-8",
        "geometry": "per_frame",
        "config": {"size": 8},
    }

    def __init__(self, poison=poisoned):
        self.poison = poison
        self.calls = 0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (3, frames, height // 8, width // 8)

    def encode(self, frames_NFHWC: np.ndarray) -> np.ndarray:
        self.calls += 1
        if any(self.poison(f) for f in frames_NFHWC):
            raise RuntimeError("codec refused the frames")
        return pool(frames_NFHWC)


def flaky_pool(cfg: LatentConfig, device: str) -> PoolEncoder:
    """The LatentEncoderFactory the Ray job gets (module level: its actors import it)."""
    assert device == "cpu"
    return PoolEncoder()


def part_of(episodes, cfg):
    return assemble_part((process_episode_inline(ep, cfg) for ep in episodes), cfg.norm.sketch_k)


def process_episode_inline(ep, cfg):
    rows, ledger, windows_in = episode_sample_rows(ep, cfg, {})
    record = {
        "episode_id": ep.episode_id,
        "source": ep.source,
        "source_path": "mem/" + ep.episode_id,
        "stage": "passed",
        "outcome": "samples",
        "windows_in": windows_in,
        "ledger": [r.to_row() for r in ledger],
    }
    return rows, record


def test_each_sample_is_encoded_or_rejected_alone_and_its_episode_keeps_the_count():
    cfg = get_preset("debug")
    table, records, sketches = part_of(make_episodes((24, 30, 26)), cfg)
    rows = table.to_pylist()
    frames = [decode_sample_frames(r["video"], r["video_format"]) for r in rows]
    bad = {r["sample_id"] for r, f in zip(rows, frames, strict=True) if poisoned(f)}
    assert 0 < len(bad) < len(rows)  # the data has both kinds (a fixed property of the seed)

    encoder = PoolEncoder()
    results = encode_rows(rows, encoder, batch_size=8)
    kept, new_records, new_sketches = apply_latents(rows, records, sketches, results, cfg.norm.sketch_k)

    assert [r["sample_id"] for r in kept] == [r["sample_id"] for r in rows if r["sample_id"] not in bad]
    for r in kept:
        want = pool(decode_sample_frames(r["video"], r["video_format"])[None])[0]
        np.testing.assert_array_equal(latents_from_bytes(r["latents"], r["latent_shape"]), want)
    # every record: samples + its new latents rejections = what it had
    for old, new, sketch in zip(records, new_records, new_sketches, strict=True):
        mine = [r for r in rows if r["episode_id"] == old["episode_id"]]
        rejected = [x for x in new["ledger"] if x["stage"] == "latents"]
        assert {x["window"] for x in rejected} == {r["start_frame"] for r in mine if r["sample_id"] in bad}
        assert new["samples"] + len(rejected) == old["samples"]
        assert all(x["reason"] == "encode_failed" and "codec refused" in x["detail"] for x in rejected)
        assert all(x["path"] == old["source_path"] and x["episode"] == old["episode_id"] for x in rejected)
        # the statistics sketch covers exactly the kept rows
        left = [r for r in kept if r["episode_id"] == old["episode_id"]]
        assert sketch == raw_rows_accumulator(episode_table(left), cfg.norm.sketch_k).to_bytes()
        assert new["outcome"] == "samples"


def test_an_episode_whose_every_sample_fails_becomes_an_episode_rejection():
    cfg = get_preset("debug")
    episodes = make_episodes((24, 30))
    table, records, sketches = part_of(episodes, cfg)
    rows = table.to_pylist()
    first = {r["sample_id"] for r in rows if r["episode_id"] == episodes[0].episode_id}
    doomed = {
        hashlib.sha256(decode_sample_frames(r["video"], "png").tobytes()).digest()
        for r in rows
        if r["sample_id"] in first
    }
    encoder = PoolEncoder(poison=lambda f: hashlib.sha256(f.tobytes()).digest() in doomed)
    results = encode_rows(rows, encoder, batch_size=4)
    kept, new_records, new_sketches = apply_latents(rows, records, sketches, results, cfg.norm.sketch_k)

    assert {r["sample_id"] for r in kept} == {r["sample_id"] for r in rows} - first
    gone, fine = new_records
    assert gone["samples"] == 0 and gone["outcome"] == "latents" and new_sketches[0] is None
    episode_level = [x for x in gone["ledger"] if x["window"] == -1]
    assert [x["reason"] for x in episode_level] == ["no_sample_encoded"]
    assert len([x for x in gone["ledger"] if x["stage"] == "latents" and x["window"] >= 0]) == len(first)
    assert fine == records[1] and new_sketches[1] == sketches[1]

    # the driver's accounting: the episode is one rejection, its windows are counted, all balances
    no_dedup = tuple(f for f in cfg.filters.enabled if f != "duplicate")
    outcome = settle(
        new_records, [], cfg.replace(filters=replace(cfg.filters, enabled=no_dedup)), latents=True
    )
    assert outcome.stage_counts["latents"] == {"in": 2, "out": 1, "rejected": 1}
    assert outcome.stage_counts["window"]["out"] == 2 and outcome.episodes_with_samples == 1
    assert [(r.stage, r.reason) for r in outcome.rejections if r.window < 0] == [
        ("latents", "no_sample_encoded")
    ]
    assert outcome.windows_in == sum(r["samples"] for r in new_records) + outcome.window_rejections


def test_undecodable_frames_and_nan_latents_are_rejected_with_their_reason():
    cfg = get_preset("debug")
    table, _, _ = part_of(make_episodes((24,)), cfg)
    rows = table.to_pylist()
    rows[0] = {**rows[0], "video": b"not a png"}

    class NaNOnSecond(PoolEncoder):
        def encode(self, frames):
            out = pool(frames)
            if any(np.array_equal(f, second) for f in frames):
                out[:] = np.nan
            return out

    second = decode_sample_frames(rows[1]["video"], "png")
    results = encode_rows(rows, NaNOnSecond(), batch_size=8)
    assert results[0][0] == "undecodable_frames" and "not a decodable PNG" in results[0][1]
    assert results[1][0] == "nonfinite_latents"
    assert all(isinstance(r[0], bytes) for r in results[2:])


@pytest.mark.slow
def test_the_ray_job_stores_latents_and_accounts_for_every_sample(ray_local, tmp_path):
    from curation.pipeline import job_from_dict, run

    source = write_all_formats(make_episodes((24, 30, 26, 28)), tmp_path / "src", ["lerobot_v3"])[
        "lerobot_v3"
    ]
    base = {
        "sources": [str(source)],
        "curation": {"preset": "debug"},
        "run": {"progress": False, "num_cpus": 2, "report": False, "episodes_per_task": 2},
    }
    plain = run(job_from_dict({**base, "out": str(tmp_path / "plain")}))
    job = {**base, "out": str(tmp_path / "latents"), "latents": {"codec": "pixel", "geometry": "per_frame"}}
    job["run"] = {**job["run"], "latent_actors": 2}
    with pytest.raises(ValueError, match="latent encoder"):
        run(job_from_dict(job))  # the codec is the driver's to give
    m = run(job_from_dict(job), latent_encoder=flaky_pool)

    # which samples the codec must refuse, computed from the plain run's frames
    plain_rows = [
        r
        for p in sorted((tmp_path / "plain" / "data").glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    bad = {
        r["sample_id"] for r in plain_rows if poisoned(decode_sample_frames(r["video"], r["video_format"]))
    }
    assert 0 < len(bad) < len(plain_rows)
    rows = [
        r
        for p in sorted((tmp_path / "latents" / "data").glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in plain_rows} - bad
    for r in rows:
        want = pool(decode_sample_frames(r["video"], r["video_format"])[None])[0]
        np.testing.assert_array_equal(latents_from_bytes(r["latents"], r["latent_shape"]), want)

    rejected = [x for x in m.rejections if x.stage == "latents"]
    assert len(rejected) == len(bad) and all(x.reason == "encode_failed" for x in rejected)
    c = m.counts
    assert c["windows_in"] == plain.counts["windows_in"] == c["samples"] + c["windows_rejected"]
    assert c["samples"] == plain.counts["samples"] - len(bad)
    assert c["episodes_in"] == c["episodes_with_samples"] + c["episodes_rejected"]
    assert m.stage_counts["latents"]["rejected"] == 0  # every episode kept some sample
    assert m.latents == {**PoolEncoder.identity, "latent_shape": [3, 3, 8, 8], "dtype": "float32"}
    manifest = json.loads(Path(tmp_path / "latents" / "meta" / "manifest.json").read_text())
    assert manifest["latents"]["key"] == "pool-8" and manifest["schema_version"] == "3.1"
    # the ledger file holds them too, with the sample's window
    ledger = pq.read_table(tmp_path / "latents" / "meta" / "rejections.parquet").to_pylist()
    assert sorted(x["window"] for x in ledger if x["stage"] == "latents") == sorted(
        x.window for x in rejected
    )


def test_the_latent_actors_ask_for_gpus_when_the_run_does_and_load_the_codec_there(monkeypatch, tmp_path):
    """Structural (no GPU here): the actor pool's request, and the device the codec is built for."""
    import ray

    from curation.job import CurateJob, RunConfig
    from curation.latents import PartLatentEncoder
    from curation.phases.episodes import _run_parts

    class Recording:
        def __init__(self):
            self.calls = []

        def map(self, fn, **kw):
            self.calls.append(("map", kw))
            return self

        def map_batches(self, cls, **kw):
            self.calls.append((cls.__name__, kw))
            return self

        def iter_rows(self):
            return iter(())

    latents = LatentConfig(codec="pixel", geometry="per_frame")
    for gpus, want in ((0.0, {}), (0.5, {"num_gpus": 0.5})):
        job = CurateJob(
            sources=(),
            out=str(tmp_path),
            latents=latents,
            run=RunConfig(latent_num_gpus=gpus, latent_actors=3, latent_num_cpus=2.0),
        )
        ds = Recording()
        _run_parts(job, tmp_path, ds, 0, None, flaky_pool)
        (name, kw) = ds.calls[-1]
        assert name == "PartLatentEncoder" and kw["concurrency"] == 3 and kw["num_cpus"] == 2.0
        assert {k: kw[k] for k in ("num_gpus",) if k in kw} == want
        assert kw["fn_constructor_kwargs"]["work"] == str(tmp_path)  # the last stage writes the part
        assert ds.calls[0][0] == "map"

    seen = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    PartLatentEncoder(latents, lambda cfg, device: seen.append(device) or PoolEncoder(), sketch_k=64)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    PartLatentEncoder(latents, lambda cfg, device: seen.append(device) or PoolEncoder(), sketch_k=64)
    assert seen == ["cuda", "cpu"]
