"""``gwp demo --model``: the model preset of both trainings, checked against the registry."""

from __future__ import annotations

import pytest

from pipelines.demo import build_parser


def test_model_flag_takes_a_registered_preset_and_names_a_misspelt_one(capsys):
    assert build_parser().parse_args([]).model is None  # the demo preset's own model stands
    assert build_parser().parse_args(["--model", "cpu-video"]).model == "cpu-video"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--model", "cpu-vidoe"])
    assert exit_.value.code == 2
    assert "did you mean 'cpu-video'" in capsys.readouterr().err
