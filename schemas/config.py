"""One strict loader from plain data (a JSON/TOML table, a flag's value) to a frozen config dataclass.

:func:`from_dict` builds ``cls`` from ``data`` field by field, following the dataclass's type hints:

* a nested dataclass is a nested table, built over the base's value (so a file overrides only the
  fields it names), or an instance already built;
* ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``list[X]`` accept a JSON list (a fixed-length tuple checks
  its length), ``dict[K, V]`` a table;
* ``typing.Literal[...]`` is a closed set of choices: a value outside it is an error that lists them;
* ``bool``/``int``/``float``/``str`` are checked, not cast (``"3"`` is not an int, ``true`` not a
  number; an int is accepted as a float), ``X | None`` accepts ``null``;
* a key that is not a field is an error naming the allowed fields and the closest one.

Every error is a :class:`ConfigError` whose message starts with the dotted path of the field
(``job.json.curation.windows.tail: must be one of ['drop', 'pad'], got 'wrap'``), so a command
prints it as one line and exits 2. Checks of a value against others (``min_steps <= max_steps``)
stay in the dataclass's ``__post_init__``; a ``ConfigError`` or ``ValueError`` raised there is
re-raised under the same path. :func:`check_choices` is the ``Literal`` check for ``__post_init__``,
so a config built in Python is held to the same choices as one read from a file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from schemas.errors import ConfigError
from schemas.registry import closest

C = TypeVar("C")


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) type, else None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg)
    return None


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of the dataclass ``cls`` (init fields only)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def check_choices(obj: Any, where: str | None = None) -> None:
    """Every ``Literal``-typed field of the dataclass ``obj`` holds one of its choices."""
    for name, tp in field_types(type(obj)).items():
        choices = literal_choices(tp)
        value = getattr(obj, name)
        if choices is not None and not _is_choice(value, choices) and value is not None:
            raise ConfigError(where or type(obj).__name__, name, _not_a_choice(value, choices))


def _is_choice(value: Any, choices: tuple[Any, ...]) -> bool:
    # True == 1 in Python: a bool is not a stage number, nor an int a bool
    return any(value == c and type(value) is type(c) for c in choices)


def _not_a_choice(value: Any, choices: tuple[Any, ...]) -> str:
    return f"must be one of {list(choices)}, got {value!r}"


def from_dict(cls: type[C], data: Any, where: str, base: C | None = None) -> C:
    """``cls`` from the table ``data`` over ``base`` (default: the dataclass's own defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, "", f"expected a table/object, got {type(data).__name__}")
    types_ = field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        close = closest(str(unknown[0]), types_, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(where, str(unknown[0]), f"unknown field{hint}; allowed: {list(types_)}")
    if base is None:
        required = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(where, missing[0], "missing (a required field)")
    values = {}
    for key, value in data.items():
        inner_base = getattr(base, key) if base is not None else None
        values[key] = coerce(types_[key], value, f"{where}.{key}", inner_base)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ConfigError as err:  # raised by __post_init__ under the class name: re-root it here
        raise ConfigError(where, err.field, err.problem) from None
    except ValueError as err:
        raise ConfigError(where, "", str(err)) from None


def coerce(tp: Any, value: Any, path: str, base: Any = None) -> Any:
    """``value`` checked (and, for lists and tables, converted) against the type ``tp``; errors name ``path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, path, base)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else _bad(path, f"{value!r} fits none of {options}")
    if origin is typing.Literal:
        if not _is_choice(value, args):
            raise _bad(path, _not_a_choice(value, args))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # built already (by a record's own reader, e.g. EmbodimentSpec.from_dict)
            return value
        if not isinstance(value, Mapping):
            raise _bad(path, f"expected a table/object, got {type(value).__name__}")
        return from_dict(tp, value, path, base)  # type: ignore[arg-type]
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad(path, f"expected a list, got {type(value).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if args and len(value) != len(args):
                raise _bad(path, f"expected {len(args)} values, got {len(value)}")
            items = [coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))]
        else:
            inner = args[0] if args else Any
            items = [coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(path, f"expected a table/object, got {type(value).__name__}")
        inner = args[1] if args else Any
        return {k: coerce(inner, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise _bad(path, f"expected a path, got {value!r}")
        return Path(value)
    raise TypeError(f"config field type {tp!r} not supported")  # a bug in the dataclass, not in the file


def _bad(path: str, problem: str) -> ConfigError:
    where, _, field = path.rpartition(".")
    return ConfigError(where, field, problem) if where else ConfigError(path, "", problem)
