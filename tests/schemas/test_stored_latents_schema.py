"""Stored latents in the data model (schema 3.1): the ``Sample.latents`` column, its bytes, its checks
(row by row and whole tables alike), the manifest's codec entry, and the ``latents`` config section."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from schemas import Manifest, Sample, SchemaError, validate_sample_table
from schemas.config import from_dict
from schemas.errors import ConfigError
from schemas.latents import LatentConfig, identity_differences, latents_from_bytes, latents_to_bytes
from schemas.sample import OPTIONAL_COLUMNS
from schemas.version import SCHEMA_VERSION, check_schema_version

SHAPE = (4, 2, 3, 5)


def sample(**changes) -> Sample:
    action_mask = np.zeros(32, bool)
    action_mask[:2] = True
    action = np.zeros((3, 32), np.float32)
    action[:, :2] = 0.5
    base = Sample(
        sample_id="s0",
        episode_id="e0",
        source="src",
        embodiment="metaworld_sawyer",
        embodiment_id=0,
        start_frame=4,
        frame_indices=(4, 6, 8),
        instruction="open the drawer",
        caption="",
        video=b"\x89PNG",
        video_format="png",
        height=48,
        width=80,
        action=action,
        action_mask=action_mask,
        state=np.zeros(32, np.float32),
        state_mask=np.zeros(32, bool),
        latent_shape=SHAPE,
        latents=latents_to_bytes(np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) / 7),
    )
    return base.with_(**changes)


def test_latent_bytes_are_float32_of_the_shape_and_refuse_another_size():
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    data = latents_to_bytes(x)
    assert len(data) == 4 * x.size
    np.testing.assert_array_equal(latents_from_bytes(data, SHAPE), x)
    with pytest.raises(
        ValueError, match=r"shard-3.parquet: 480 latent bytes do not fit latent_shape \(4, 2, 3, 4\)"
    ):
        latents_from_bytes(data, (4, 2, 3, 4), "shard-3.parquet")
    with pytest.raises(ValueError, match="do not fit latent_shape"):
        latents_from_bytes(data, ())


def test_a_sample_with_latents_round_trips_through_arrow_and_one_without_reads_as_before():
    s = sample().validate()
    table = pa.Table.from_pylist(
        [s.to_row(), sample(latents=b"", latent_shape=()).to_row()], schema=Sample.arrow_schema()
    )
    validate_sample_table(table)
    back = [Sample.from_row(r) for r in table.to_pylist()]
    assert back[0] == s and back[0].latents == s.latents
    assert back[1].latents == b"" and table.column("latents")[1].as_py() is None
    # a shard written before 3.1 has no latents column: its rows read with none
    old = table.drop_columns(["latents"]).to_pylist()[1]
    assert Sample.from_row(old).latents == b""
    assert OPTIONAL_COLUMNS == ("latents",)


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"latent_shape": ()}, r"480 bytes do not fit latent_shape \(\) \(float32\)"),
        ({"latent_shape": (4, 2, 3, 4)}, r"480 bytes do not fit latent_shape \(4, 2, 3, 4\)"),
        ({"video_format": "latent"}, "must be empty when video_format is 'latent'"),
    ],
)
def test_bad_stored_latents_fail_alike_row_by_row_and_as_a_table(changes, problem):
    bad = sample(**changes)
    with pytest.raises(SchemaError, match="latents") as one:
        bad.validate()
    assert re.search(problem, one.value.problem)
    rows = [sample(sample_id="ok").to_row(), bad.to_row()]
    with pytest.raises(SchemaError) as whole:
        validate_sample_table(pa.Table.from_pylist(rows, schema=Sample.arrow_schema()), where="part-0")
    assert str(whole.value).startswith("part-0.latents: row 1 (sample_id 's0'): ")
    assert str(whole.value).endswith(one.value.problem)


def test_the_manifest_records_the_codec_of_the_stored_latents():
    entry = {"codec": "pixel", "key": "pixel-abc", "geometry": "per_frame", "config": {"patch": 4}}
    m = Manifest(
        "0", {}, {"episodes_in": 0, "episodes_with_samples": 0, "episodes_rejected": 0}, {}, (), (), ()
    )
    with_latents = Manifest(**{**m.__dict__, "latents": entry})
    assert Manifest.from_json(with_latents.to_json()).latents == entry
    assert Manifest.from_row(with_latents.to_row()).latents == entry
    assert Manifest.from_json(m.to_json()).latents is None


def test_schema_3_1_reads_3_0_data():
    assert SCHEMA_VERSION == "3.1"
    check_schema_version("3.0", "old/shard-00000.parquet")


def test_identity_differences_name_every_field_that_differs():
    stored = {
        "codec": "wan-vae",
        "key": "a",
        "geometry": "clip",
        "config": {"frame_mode": "video", "dtype": "f32"},
    }
    model = {
        "codec": "wan-vae",
        "key": "b",
        "geometry": "per_frame",
        "config": {"frame_mode": "independent", "dtype": "f32"},
    }
    assert identity_differences(stored, model) == [
        "config.frame_mode: stored 'video', model 'independent'",
        "geometry: stored 'clip', model 'per_frame'",
    ]
    assert identity_differences(stored, stored) == []


def test_the_latents_section_is_checked():
    cfg = from_dict(
        LatentConfig, {"codec": "wan-vae", "vae": "/models/wan", "geometry": "clip"}, "job.latents"
    )
    assert cfg.batch_size == 8 and cfg.vae_temporal == 4
    with pytest.raises(ConfigError, match=r"job\.latents\.vae: codec 'wan-vae' needs"):
        from_dict(LatentConfig, {"codec": "wan-vae"}, "job.latents")
    with pytest.raises(ConfigError, match=r"job.latents.geometry: must be one of \['per_frame', 'clip'\]"):
        from_dict(LatentConfig, {"codec": "pixel", "geometry": "video"}, "job.latents")
    with pytest.raises(ConfigError, match="batch_size: must be >= 1"):
        LatentConfig(codec="pixel", batch_size=0)
