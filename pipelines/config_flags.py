"""Command-line flags generated from config dataclass fields and registry names, never re-declared.

A flag that overrides a config field is derived from the field itself::

    add_field_flags(parser, TrainConfig, ["steps", "lr", "zero_stage"])   # --steps, --lr, --zero-stage
    cfg = replace(preset, **field_overrides(args, TrainConfig, ["steps", "lr", "zero_stage"]))

* the flag is ``--`` + the field name with ``-`` for ``_`` (``prefix`` puts a section in front:
  ``--caption-model`` for ``CaptionConfig.model``), its ``dest`` the field name (``prefix_field``);
* its value is parsed by the field's type: ``int``/``float``/``str``, ``true``/``false`` for a bool,
  ``a,b,c`` for a tuple, ``none`` for ``X | None``; a ``Literal`` field's choices are argparse choices;
* a flag not given sets nothing (``argparse.SUPPRESS``: the preset's value stands, and ``none`` given
  for an optional field is told apart from no flag) unless ``defaults`` gives an instance whose
  values are then the flag defaults; its help is the field's ``metadata["help"]``, else the type, with the
  dataclass default.

:func:`name_flag` is the same for a registry: the flag's value must be one of the registry's names,
and a misspelt one is answered with the registry's "did you mean" (:func:`names_flag` for a plain
table of names, e.g. the source formats). :func:`parse_field_value` turns a
``FIELD=VALUE`` text into the field's typed value (``--model-override``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.usage import known
from schemas.config import ConfigError, coerce, field_types, literal_choices
from schemas.registry import Registry


def flag_name(field: str, prefix: str = "") -> str:
    return "--" + (f"{prefix}-" if prefix else "") + field.replace("_", "-")


def _dest(field: str, prefix: str) -> str:
    return f"{prefix.replace('-', '_')}_{field}" if prefix else field


def parse_text(tp: Any, raw: str, path: str) -> Any:
    """The value of type ``tp`` written as ``raw`` on a command line (errors: :class:`ConfigError`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() == "none" and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # one type or None: all the configs use
        return parse_text(inner, raw, path)
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        value = int(raw) if kinds == {int} and raw.lstrip("-").isdigit() else raw
        return coerce(tp, value, path)
    if origin is tuple:
        inner = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(raw.split(","))
        parts = raw.split(",")
        if len(parts) != len(inner):
            raise ConfigError(path, "", f"expected {len(inner)} comma-separated values, got {raw!r}")
        return tuple(
            parse_text(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(inner, parts, strict=True))
        )
    if tp is bool:
        if raw.lower() not in ("true", "false"):
            raise ConfigError(path, "", f"expected true or false, got {raw!r}")
        return raw.lower() == "true"
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise ConfigError(
                path, "", f"expected {'an integer' if tp is int else 'a number'}, got {raw!r}"
            ) from None
    if tp is str:
        return raw
    raise TypeError(f"no command-line form for config field type {tp!r}")  # a bug: pick another field


def parse_field_value(cls: type, field: str, raw: str) -> Any:
    """``raw`` as the typed value of ``cls.field`` (``ConfigError`` naming the field when it does not fit)."""
    return parse_text(field_types(cls)[field], raw, f"{cls.__name__}.{field}")


def _arg_type(tp: Any, path: str) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse_text(tp, raw, path)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None  # names the field, e.g. TrainConfig.lr

    convert.__name__ = getattr(tp, "__name__", str(tp))  # argparse names the type in some messages
    return convert


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Sequence[str],
    *,
    prefix: str = "",
    defaults: Any = None,
) -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls`` in ``names`` (see the module docstring)."""
    types_ = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        tp, f = types_[name], fields[name]
        choices = literal_choices(tp)
        if f.default is not dataclasses.MISSING:
            shown = f"; {cls.__name__} default {f.default!r}"
        else:
            shown = ""
        text = f.metadata.get("help") or f"{cls.__name__}.{name}"
        parser.add_argument(
            flag_name(name, prefix),
            dest=_dest(name, prefix),
            type=_arg_type(tp, f"{cls.__name__}.{name}"),
            choices=list(choices) if choices is not None else None,
            default=getattr(defaults, name) if defaults is not None else argparse.SUPPRESS,
            metavar=None if choices is not None else name.upper(),
            help=f"{text} (unset: as configured{shown})" if defaults is None else text,
        )


def field_overrides(
    args: argparse.Namespace, cls: type, names: Sequence[str], prefix: str = ""
) -> dict[str, Any]:
    """``{field: value}`` of the flags :func:`add_field_flags` added (without ``defaults``) that were given."""
    unknown = [name for name in names if name not in field_types(cls)]
    if unknown:  # a bug in the caller: the flag was never added
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    dests = {name: _dest(name, prefix) for name in names}
    return {name: getattr(args, dest) for name, dest in dests.items() if hasattr(args, dest)}


def name_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    registry: Registry[Any],
    *,
    default: str | None = None,
    help: str = "",
    **kwargs: Any,
) -> None:
    """``flag`` whose value is one of ``registry``'s names (the registry's "did you mean" otherwise)."""
    names_flag(parser, flag, registry.kind, registry.names(), default=default, help=help, **kwargs)


def names_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: str,
    names: Sequence[str],
    *,
    default: str | None = None,
    help: str = "",
    **kwargs: Any,
) -> None:
    """:func:`name_flag` over a table that is not a :class:`Registry` (``kind``: what an error calls a name)."""
    names = list(names)
    parser.add_argument(
        flag,
        default=default,
        type=known(kind, names),
        help=f"{help or kind} ({', '.join(names)})" + (f"; default {default}" if default else ""),
        **kwargs,
    )
