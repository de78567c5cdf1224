"""A registry of named presets, the one pattern behind every ``get_*_config(name)``.

Presets are registered once at import time and looked up by name from the command line.
``register`` rejects a second entry under a name already taken (even an equal one), so two
modules can never silently fight over a preset; ``get`` answers a misspelt name with the
closest known names ("did you mean …") and the full list, so a typo on the command line
tells the user what to type instead.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in its registry; the message has the "did you mean" and the known names.

    A ``KeyError`` (callers that catch one keep working) whose ``str`` is the message itself, not
    its repr, so a command line can print it as is.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` ("model config") is what error messages call them."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return sorted(self._entries)
