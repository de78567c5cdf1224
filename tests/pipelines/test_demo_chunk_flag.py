"""``gwp demo --chunk P``: the curated windows' action chunk (hence the policy's), default untouched."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.demo import build_parser, main
from pipelines.demo_config import get_demo_config
from pipelines.demo_report import write_demo_report
from schemas.config import ConfigError


def test_default_demo_keeps_its_curation_and_the_flag_sets_only_the_chunk():
    cfg = get_demo_config("default")
    assert cfg.chunk is None
    assert cfg.curation_config() is cfg.curation  # the default job, hence its stage markers, unchanged
    assert cfg.curation_config().windows.chunk == 8

    args = build_parser().parse_args(["--chunk", "16"])
    assert args.chunk == 16
    assert not hasattr(build_parser().parse_args([]), "chunk")  # unset: the preset's value stands
    long = replace(cfg, chunk=16).curation_config()
    assert long.windows.chunk == 16
    # everything else of the job as the preset's
    assert replace(long, windows=cfg.curation.windows) == cfg.curation
    assert replace(long.windows, chunk=8) == cfg.curation.windows


def test_a_chunk_below_one_is_refused_naming_the_field(capsys):
    with pytest.raises(ConfigError, match="chunk: must be >= 1, got 0"):
        replace(get_demo_config("default"), chunk=0)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--chunk", "sixteen"])
    assert exit_.value.code == 2
    assert "DemoConfig.chunk" in capsys.readouterr().err
    assert main(["--chunk", "0", "--out", "/nonexistent-dir/never-made"]) == 2  # before any stage runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunk: must be >= 1" in err[0]


def test_the_report_names_the_chunk(tmp_path):
    report = write_demo_report(tmp_path, replace(get_demo_config("smoke"), chunk=16), {}, 0.0)
    assert "action chunk P = 16" in report.read_text()
    report = write_demo_report(tmp_path, get_demo_config("smoke"), {}, 0.0)
    assert "action chunk P = 8" in report.read_text()
