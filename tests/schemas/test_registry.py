"""The shared preset registry: duplicates rejected, misspelt names answered with the closest ones."""

from __future__ import annotations

import pytest

from pretrain.config import get_model_config, list_model_configs
from pretrain.run_config import get_train_config, train_config_names
from schemas.registry import Registry


def test_register_get_and_names_sorted():
    reg: Registry[int] = Registry("widget")
    assert reg.register("beta", 2) == 2
    reg.register("alpha", 1)
    assert reg.get("alpha") == 1 and reg.get("beta") == 2
    assert reg.names() == ["alpha", "beta"]


def test_duplicate_name_rejected_even_when_equal():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match=r"^widget 'a' is already registered$"):
        reg.register("a", 1)
    assert reg.get("a") == 1


def test_unknown_name_message():
    reg: Registry[int] = Registry("widget")
    for name in ("small", "smell", "large"):
        reg.register(name, 0)
    with pytest.raises(KeyError) as err:
        reg.get("smal")
    assert err.value.args[0] == (
        "unknown widget 'smal'; did you mean 'small' or 'smell'? (known: large, small, smell)"
    )
    with pytest.raises(KeyError) as err:
        reg.get("zzz")
    assert err.value.args[0] == "unknown widget 'zzz' (known: large, small, smell)"


def test_pretrain_presets_use_the_registry():
    assert list_model_configs() == sorted(list_model_configs())
    assert get_model_config("debug").name == "debug"
    assert {"debug", "demo", "small", "wan22-5b"} <= set(train_config_names())
    with pytest.raises(KeyError, match=r"unknown train config preset 'wan22_5b'; did you mean 'wan22-5b'"):
        get_train_config("wan22_5b")


def test_a_run_shorter_than_the_presets_warmup_gets_a_shorter_warmup(tmp_path):
    import argparse

    from pipelines import train_cli
    from pretrain.run_config import get_train_config

    args = argparse.Namespace(out=str(tmp_path), steps=1)
    assert get_train_config("debug").warmup_steps > 1
    cfg = train_cli.train_config(args, "debug")
    assert (cfg.steps, cfg.warmup_steps) == (1, 1)
    bad = argparse.Namespace(out=str(tmp_path), steps=1, warmup_steps=5)  # asked for: still refused
    assert train_cli.checked_train_config("pretrain", bad, "debug") is None
