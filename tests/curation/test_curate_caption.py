"""The curation job's captioning actor (``PartCaptioner``) on the part rows of the one-pass
episode stage, with a tiny randomly initialised CoCa.

A file of its own: torch (and triton, which it imports lazily) is imported when this module
is collected, before any test has loaded the video and simulation libraries; importing triton
after those, in one process, crashed the interpreter (seen running tests/curation/test_curate.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip

from curation.config import CaptionConfig, get_preset
from curation.episode_samples import PartCaptioner, make_part_fn, table_from_bytes
from curation.formats.lerobot_v3 import write_lerobot_v3
from curation.ingest import SourceSpec, discover
from pretrain.text_encoder import captioner_from_config
from tests.pretrain.test_caption import TINY
from tests.support.helpers import make_episodes


def test_caption_actor_fills_every_sample_of_the_part_rows(tmp_path):
    """The contract between the episode stage (rows of one part, not written: a caption stage
    follows) and the captioning actor of the job (called in-process here, on a tiny random
    CoCa): every sample gets a caption and a CLIP score, the records
    and sketches pass through untouched, and with ``work`` set the actor writes the part."""
    from curation.parts import iter_sketches, part_path, read_part

    (tmp_path / "coca_curate_tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "coca_curate_tiny.json")
    src = write_lerobot_v3(make_episodes([40, 44], size=128), tmp_path / "src")
    refs, _ = discover(SourceSpec(str(src)))
    part_fn = make_part_fn(get_preset("default"), work=None)
    row = part_fn({"part": 3, "refs": json.dumps([r.to_row() for r in refs])})
    before = table_from_bytes(row["table"]).to_pylist()
    assert len({r["episode_id"] for r in before}) == 2, json.loads(row["records"])
    batch = {k: np.asarray([v], dtype=object) for k, v in row.items()}
    cfg = CaptionConfig(model="coca_curate_tiny", pretrained=None, max_tokens=4)
    out = PartCaptioner(cfg, captioner_from_config)(batch)
    assert list(out["records"]) == [row["records"]] and list(out["sketches"]) == [row["sketches"]]
    after = table_from_bytes(out["table"][0]).to_pylist()
    assert [r["sample_id"] for r in after] == [r["sample_id"] for r in before]
    for r in after:
        assert isinstance(r["caption"], str) and "clip_score" in r["quality"]
    written = PartCaptioner(cfg, captioner_from_config, work=str(tmp_path / "work"))(batch)
    assert written["table"][0] == b""
    table, records = read_part(part_path(tmp_path / "work", 3))
    assert table.column("sample_id").to_pylist() == [r["sample_id"] for r in before]
    assert records == json.loads(row["records"])
    assert [s is not None for _, s in iter_sketches(part_path(tmp_path / "work", 3))] == [True, True]


def register_tiny_coca() -> None:
    """Ray worker set-up hook: the tiny CoCa config, in the caption actors' processes too."""
    import os

    open_clip.add_model_config(os.environ["GWP_TINY_COCA"])


def test_job_with_captions_runs_the_actor_pool_and_writes_captioned_shards(tmp_path):
    """The whole job with the caption stage on (a Ray Data actor pool over the parts; the actor
    writes each part): every shard row has a caption and a CLIP score; the instructions' token
    states come from the job's text encoder (hashed here), not from the captioner."""
    import os

    import pyarrow.parquet as pq
    import ray

    from curation.pipeline import job_from_dict, run

    config = tmp_path / "coca_curate_tiny.json"
    config.write_text(json.dumps(TINY))
    root = Path(__file__).resolve().parents[2]
    env = {
        "GWP_TINY_COCA": str(config),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    hook = "tests.curation.test_curate_caption.register_tiny_coca"
    ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": hook, "env_vars": env},
    )
    try:
        src = write_lerobot_v3(make_episodes([40, 44, 48], size=64), tmp_path / "src")
        job = job_from_dict(
            {
                "sources": [str(src)],
                "out": str(tmp_path / "out"),
                "curation": {"preset": "debug"},
                "caption": {
                    "model": "coca_curate_tiny",
                    "pretrained": None,
                    "max_tokens": 4,
                    "min_tokens": 1,
                },
                "run": {"progress": False, "num_cpus": 2, "report": False, "episodes_per_task": 2},
            }
        )
        m = run(job, caption_model=captioner_from_config)
    finally:
        ray.shutdown()
    assert m.counts["episodes_with_samples"] == 3 and m.counts["samples"] > 0
    table = pq.read_table(tmp_path / "out" / "data" / "shard-00000.parquet")
    assert table.num_rows == m.counts["samples"]
    assert all(isinstance(c, str) and c for c in table.column("caption").to_pylist())
    assert m.text is not None and m.text["encoder"]["kind"] == "hashed"  # captions do not embed text
    assert all(q["clip_score"] is not None for q in table.column("quality").to_pylist())


def test_a_job_with_captions_is_refused_without_the_model_the_driver_provides(tmp_path):
    """Curation does not import the caption model: a job that captions gets it from its driver
    (pipelines/curate.py) and fails at once, before writing anything, when none is given."""
    import pytest

    from curation.pipeline import job_from_dict, run

    job = job_from_dict(
        {"sources": [str(tmp_path)], "out": str(tmp_path / "out"), "caption": {"pretrained": None}}
    )
    with pytest.raises(ValueError, match="no caption model was given"):
        run(job)
    assert not (tmp_path / "out").exists()
