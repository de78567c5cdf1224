"""The training and generation flags that override config fields are generated from those fields.

``--action-weight`` / ``--video-weight`` / ``--action-shift`` / ``--video-shift`` (FlowConfig),
``--action-dropout`` (ObjectiveConfig), ``--codec`` / ``--codec-patch`` / ``--vae`` (CodecChoice) and
every ``gwp generate-sim`` flag but ``--out`` (GenerateConfig) take their type, choices and help from
the dataclass, parse into it, and a value the config refuses is one usage error; none of it loads
torch, and no driver declares such a flag by hand again.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import finetune, pretrain, train_cli
from pipelines.config_flags import flag_name
from pipelines.usage import UsageError
from pretrain.codec_choice import LATENT_CODECS, CodecChoice
from pretrain.objective_config import FlowConfig, ObjectiveConfig
from pretrain.run_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--data", "d", "--out", "o"]


def _actions(parser):
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings}


def test_flow_objective_and_codec_flags_carry_the_field_type_choices_and_help():
    for parser, flow_fields in (
        (finetune.build_parser(), train_cli.FLOW_OVERRIDES),
        (pretrain.build_parser(), ("video_shift",)),
    ):
        actions = _actions(parser)
        for name in flow_fields:
            action = actions[flag_name(name)]
            help_ = FlowConfig.__dataclass_fields__[name].metadata["help"]
            assert action.dest == name and action.help.startswith(help_)
            assert f"FlowConfig default {getattr(FlowConfig(), name)!r}" in action.help
        assert actions["--codec"].choices == list(LATENT_CODECS)
        assert actions["--codec"].default == CodecChoice().codec
        assert actions["--vae"].help == CodecChoice.__dataclass_fields__["vae"].metadata["help"]
    # pretraining has no action target: no action weight or shift to set
    assert "--action-weight" not in _actions(pretrain.build_parser())
    assert "--action-dropout" in _actions(pretrain.build_parser())


def test_flow_flags_parse_into_flow_config_and_leave_the_rest_at_its_defaults():
    args = finetune.build_parser().parse_args(
        [*BASE, "--init", "none", "--action-weight", "2.5", "--video-shift", "1.5"]
    )
    assert train_cli.flow_config(args) == FlowConfig(action_weight=2.5, video_shift=1.5)
    assert (
        train_cli.flow_config(finetune.build_parser().parse_args([*BASE, "--init", "none"])) == FlowConfig()
    )
    args = pretrain.build_parser().parse_args([*BASE, "--action-dropout", "0.25", "--video-shift", "3"])
    assert pretrain.objective_config(args) == ObjectiveConfig(
        flow=FlowConfig(video_shift=3.0), action_dropout=0.25
    )


@pytest.mark.parametrize(
    ("driver", "argv", "message"),
    [
        (
            finetune,
            ["--init", "none", "--action-shift", "0"],
            "FlowConfig: action_shift must be > 0, got 0.0",
        ),
        (pretrain, ["--action-dropout", "1.5"], "ObjectiveConfig: action_dropout must be in [0, 1], got 1.5"),
    ],
)
def test_a_value_the_config_refuses_is_a_usage_error_naming_the_field(driver, argv, message):
    args = driver.build_parser().parse_args([*BASE, *argv])
    build = train_cli.flow_config if driver is finetune else pretrain.objective_config
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(args)


def test_a_wrong_flag_type_is_one_line_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        finetune.build_parser().parse_args([*BASE, "--init", "none", "--video-weight", "heavy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "argument --video-weight: FlowConfig.video_weight: expected a number, got 'heavy'" in err[0]


def test_the_codec_literal_is_the_codec_registry():
    from pretrain.codec import list_codecs

    assert sorted(LATENT_CODECS) == list_codecs()


def test_generate_sim_flags_are_the_generate_config_fields():
    from pipelines.generate_sim import GENERATE_FLAGS, GenerateConfig, build_parser

    args = build_parser().parse_args(["--out", "o"])
    assert GenerateConfig(**{n: getattr(args, n) for n in GENERATE_FLAGS}) == GenerateConfig()
    args = build_parser().parse_args(["--out", "o", "--tasks", "push-v3,door-open-v3", "--codec", "h264"])
    assert (args.tasks, args.codec) == (("push-v3", "door-open-v3"), "h264")
    assert _actions(build_parser())["--codec"].choices == ["h264", "av1", "mpeg4"]


def test_parsing_the_training_flags_loads_no_torch():
    code = (
        "import sys\n"
        "from pipelines import finetune, pretrain, train_cli\n"
        "a = finetune.build_parser().parse_args(['--data', 'd', '--out', 'o', '--init', 'none', '--video-shift', '3'])\n"
        "train_cli.flow_config(a)\n"
        "p = pretrain.build_parser().parse_args(['--data', 'd', '--out', 'o', '--action-dropout', '0.2'])\n"
        "pretrain.objective_config(p)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# the drivers built on these configs; other commands (evaluate, open-loop) have their own --steps, --tasks
DRIVERS = ("train_cli.py", "pretrain.py", "finetune.py", "generate_sim.py")
# on-only switches (``--offload-optimizer``, not ``--offload-optimizer true``), passed to train_config as fixed
SWITCHES = {"--offload-optimizer", "--activation-checkpointing"}


def _config_flags() -> set[str]:
    fields = [
        f.name
        for cls in (FlowConfig, ObjectiveConfig, CodecChoice, TrainConfig)
        for f in dataclasses.fields(cls)
    ]
    from pipelines.generate_sim import GENERATE_FLAGS

    return {flag_name(name) for name in [*fields, *GENERATE_FLAGS]} - SWITCHES


def test_no_driver_declares_a_config_field_flag_by_hand():
    """``add_argument("--video-shift", …)`` again in any driver would be a second definition of the field."""
    wanted = _config_flags()
    found = []
    for path in (ROOT / "pipelines" / name for name in DRIVERS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags = [
                    a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
                found += [f"{path.name}: {flag}" for flag in flags if flag in wanted]
    assert found == []
