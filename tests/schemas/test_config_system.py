"""The one config system: one registry (and did-you-mean) per preset table, one strict loader,
Literal choices, and command-line flags generated from the dataclass fields."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from curation.config import ConfigError, WindowConfig, get_preset, preset_with_overrides
from pipelines.config_flags import add_field_flags, field_overrides, parse_field_value
from pipelines.usage import ArgumentParser
from pretrain.run_config import ZERO_STAGES, TrainConfig, get_train_config
from schemas.config import from_dict

ROOT = Path(__file__).resolve().parents[2]


# ---- one registry, one did-you-mean ------------------------------------------------------------


def _model(name):
    from pretrain.config import get_model_config

    return get_model_config(name)


def _codec(name):
    from pretrain.codec import make_codec

    return make_codec(name)


def _embodiment(name):
    from schemas import get_embodiment

    return get_embodiment(name)


def _demo(name):
    from pipelines.demo_config import get_demo_config

    return get_demo_config(name)


@pytest.mark.parametrize(
    "lookup, typo, suggestion, error",
    [
        (_model, "smal", "small", KeyError),
        (get_train_config, "debgu", "debug", KeyError),
        (_codec, "pixl", "pixel", KeyError),
        (get_preset, "papr", "paper", ConfigError),  # named in a config file: a ConfigError
        (_embodiment, "alhoa", "aloha", KeyError),
        (_demo, "smok", "smoke", KeyError),
    ],
    ids=["model", "train", "codec", "curation", "embodiment", "demo"],
)
def test_every_preset_table_answers_a_typo_with_the_registry_did_you_mean(lookup, typo, suggestion, error):
    with pytest.raises(error) as err:
        lookup(typo)
    text = str(err.value)
    assert f"{typo!r}; did you mean {suggestion!r}" in text and "(known: " in text, text


def test_no_module_but_the_registry_calls_difflib():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.as_posix() == "schemas/registry.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            uses = (
                (isinstance(node, ast.Import) and any(a.name == "difflib" for a in node.names))
                or (isinstance(node, ast.ImportFrom) and node.module == "difflib")
                or (isinstance(node, ast.Attribute) and node.attr == "get_close_matches")
            )
            if uses:
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"use schemas.registry.closest / did_you_mean instead: {offenders}"


def test_the_ast_check_sees_a_private_copy(tmp_path):
    # the check above must be able to fail: the same walk on a module that has its own copy
    tree = ast.parse("import difflib\nclose = difflib.get_close_matches('a', ['b'])\n")
    hits = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "get_close_matches"]
    assert len(hits) == 1


# ---- one strict loader ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    size: int = 4
    mode: Literal["fast", "slow"] = "fast"
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("Inner", "size", "must be >= 1")


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    pair: tuple[int, int] = (1, 2)
    tags: tuple[str, ...] = ()
    stage: Literal[0, 1, 2] = 1
    maybe: str | None = None
    flag: bool = False


def _error(data, where="job.json"):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data, where)
    return str(err.value)


def test_loader_builds_nested_tuples_and_defaults():
    got = from_dict(
        Outer, {"name": "a", "inner": {"mode": "slow", "ratio": 2}, "pair": [3, 4], "tags": ["x"]}, "j"
    )
    assert got == Outer("a", Inner(4, "slow", 2.0), (3, 4), ("x",))
    assert isinstance(got.inner.ratio, float) and isinstance(got.pair, tuple)
    # over a base: only the named fields change, nested ones too
    base = Outer("b", Inner(size=9), stage=2)
    assert from_dict(Outer, {"inner": {"mode": "slow"}}, "j", base) == Outer("b", Inner(9, "slow"), stage=2)
    assert from_dict(Outer, {"name": "n", "maybe": None}, "j").maybe is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "a", "inner": {"mode": "medium"}}, "job.json.inner.mode: must be one of ['fast', 'slow'], got 'medium'"),
        ({"name": "a", "stage": 3}, "job.json.stage: must be one of [0, 1, 2], got 3"),
        ({"name": "a", "stage": True}, "job.json.stage: must be one of [0, 1, 2], got True"),
        ({"name": "a", "inner": {"sise": 2}}, "job.json.inner.sise: unknown field (did you mean 'size'?); allowed: ['size', 'mode', 'ratio']"),
        ({"name": "a", "inner": {"size": "4"}}, "job.json.inner.size: expected an integer, got '4'"),
        ({"name": "a", "inner": {"size": 0}}, "job.json.inner.size: must be >= 1"),  # __post_init__, re-rooted
        ({"name": "a", "inner": 3}, "job.json.inner: expected a table/object, got int"),
        ({"name": "a", "pair": [1, 2, 3]}, "job.json.pair: expected 2 values, got 3"),
        ({"name": "a", "tags": ["x", 5]}, "job.json.tags[1]: expected a string, got 5"),
        ({"name": "a", "flag": 1}, "job.json.flag: expected true/false, got 1"),
        ({"name": "a", "inner": {"ratio": False}}, "job.json.inner.ratio: expected a number, got False"),
        ({"inner": {}}, "job.json.name: missing (a required field)"),
    ],
    ids=["literal", "int-literal", "bool-is-not-a-stage", "unknown", "wrong-type", "post-init", "not-a-table",
         "tuple-length", "tuple-item", "bool", "float", "missing"],
)  # fmt: skip
def test_loader_errors_name_the_dotted_field(data, message):
    assert _error(data) == message


def test_project_configs_load_through_the_one_loader():
    with pytest.raises(
        ConfigError, match=r"^c\.toml\.windows\.tail: must be one of \['drop', 'pad'\], got 'wrap'$"
    ):
        preset_with_overrides({"preset": "debug", "windows": {"tail": "wrap"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"^c\.toml\.filters\.enabled\[0\]: expected a string"):
        preset_with_overrides({"filters": {"enabled": [3]}}, "c.toml")
    with pytest.raises(
        ValueError, match=r"TrainConfig\.optimizer: must be one of \['adamw', 'adam'\], got 'sgd'"
    ):
        TrainConfig.from_dict({"optimizer": "sgd"})
    with pytest.raises(ValueError, match=r"TrainConfig\.zero_stage: must be one of \[0, 1, 2, 3\], got '2'"):
        TrainConfig.from_dict({"zero_stage": "2"})
    cfg = get_train_config("debug")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_literal_choices_hold_for_configs_built_in_python():
    with pytest.raises(
        ConfigError, match=r"WindowConfig\.tail: must be one of \['drop', 'pad'\], got 'wrap'"
    ):
        WindowConfig(tail="wrap")
    with pytest.raises(ValueError, match="zero_stage"):
        dataclasses.replace(get_train_config("debug"), zero_stage=5)


# ---- flags generated from the fields -------------------------------------------------------------


def _parser(cls, names, **kw):
    p = ArgumentParser(prog="gwp test")
    add_field_flags(p, cls, names, **kw)
    return p


def test_generated_flags_parse_into_the_dataclass():
    names = ("steps", "lr", "zero_stage", "betas", "precision")
    args = _parser(TrainConfig, names).parse_args(
        ["--steps", "7", "--lr", "0.5", "--zero-stage", "3", "--betas", "0.8,0.9", "--precision", "fp32"]
    )
    over = field_overrides(args, TrainConfig, names)
    assert over == {"steps": 7, "lr": 0.5, "zero_stage": 3, "betas": (0.8, 0.9), "precision": "fp32"}
    cfg = dataclasses.replace(get_train_config("debug"), **over)
    assert (cfg.steps, cfg.zero_stage, cfg.betas) == (7, 3, (0.8, 0.9))
    # flags not given leave the preset alone
    assert field_overrides(_parser(TrainConfig, names).parse_args([]), TrainConfig, names) == {}


def test_generated_flags_take_choices_type_and_defaults_from_the_dataclass(capsys):
    p = _parser(TrainConfig, ("zero_stage", "lr"))
    actions = {a.dest: a for a in p._actions}
    assert actions["zero_stage"].choices == list(ZERO_STAGES)
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--zero-stage", "5"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.splitlines() == [
        "gwp test: error: argument --zero-stage: TrainConfig.zero_stage: must be one of [0, 1, 2, 3], got 5"
    ]
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "fast"])
    assert "TrainConfig.lr: expected a number, got 'fast'" in capsys.readouterr().err
    # with defaults=, the flag defaults are that instance's values
    dflt = _parser(Outer, ("stage", "maybe", "flag"), defaults=Outer("x", stage=2)).parse_args([])
    assert (dflt.stage, dflt.maybe, dflt.flag) == (2, None, False)


def test_prefixed_flags_and_none_for_an_optional_field():
    from curation.config import CaptionConfig
    from pipelines.curate import CAPTION_FLAGS, build_parser

    args = build_parser().parse_args(["--caption-model", "coca_ViT-L-14", "--caption-pretrained", "none"])
    assert field_overrides(args, CaptionConfig, CAPTION_FLAGS, prefix="caption") == {
        "model": "coca_ViT-L-14",
        "pretrained": None,
    }
    assert (
        field_overrides(build_parser().parse_args([]), CaptionConfig, CAPTION_FLAGS, prefix="caption") == {}
    )


def test_field_value_text_forms():
    from pretrain.config import ModelConfig

    assert parse_field_value(ModelConfig, "patch", "1,2,2") == (1, 2, 2)
    assert parse_field_value(ModelConfig, "qk_norm", "false") is False
    assert parse_field_value(Outer, "stage", "2") == 2
    with pytest.raises(ConfigError, match=r"ModelConfig\.patch: expected 3 comma-separated values"):
        parse_field_value(ModelConfig, "patch", "1,2")
    with pytest.raises(ConfigError, match=r"Outer\.stage: must be one of \[0, 1, 2\], got 7"):
        parse_field_value(Outer, "stage", "7")


# ---- the demo's settings are typed --------------------------------------------------------------


def test_demo_presets_are_typed_and_checked():
    from curation.config import CurationConfig
    from pipelines.demo_config import PRESETS, DemoConfig, DemoTraining

    assert {"default", "smoke"} <= set(PRESETS.names())
    for name in PRESETS.names():
        cfg = PRESETS.get(name)
        assert isinstance(cfg.curation, CurationConfig) and isinstance(cfg.train, DemoTraining)
        # the job file the demo writes reads back to the very same curation config
        assert preset_with_overrides(cfg.curation.to_dict(), "job") == cfg.curation
    assert PRESETS.get("smoke").train.finetune_args() == ["--heldout-fraction", "0.25"]
    with pytest.raises(KeyError, match="did you mean 'debug'"):
        DemoTraining(model="debgu")
    with pytest.raises(ConfigError, match=r"codec: must be one of \['h264', 'av1', 'mpeg4'\]"):
        DemoConfig(name="x", tasks=("drawer-open-v3",), episodes_per_task=1, image_size=64, codec="vp9")


def test_checkpoint_configs_read_back_through_the_loader():
    import json

    from policy.model import PolicyConfig
    from pretrain.config import get_model_config
    from pretrain.objective import ObjectiveConfig
    from schemas import get_embodiment

    cfg = PolicyConfig(model=get_model_config("debug"), embodiments=(get_embodiment("aloha"),))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert PolicyConfig.from_dict(data) == cfg
    with pytest.raises(
        ConfigError, match=r"^PolicyConfig\.image\.fitt: unknown field \(did you mean 'fit'\?\)"
    ):
        PolicyConfig.from_dict({**data, "image": {"fitt": "pad"}})
    obj = ObjectiveConfig(action_dropout=0.25)
    assert ObjectiveConfig.from_dict(json.loads(json.dumps(obj.to_dict()))) == obj
    with pytest.raises(ConfigError, match=r"^ObjectiveConfig\.flow\.num_steps: expected an integer"):
        ObjectiveConfig.from_dict({"flow": {"num_steps": 2.5}})
