"""A registry of named presets, the one pattern behind every ``get_*_config(name)``.

Presets are registered once at import time and looked up by name from the command line.
``register`` rejects a second entry under a name already taken (even an equal one), so two
modules can never silently fight over a preset; ``get`` answers a misspelt name with the
closest known names ("did you mean …") and the full list, so a typo on the command line
tells the user what to type instead. :func:`closest` / :func:`did_you_mean` are that same suggestion for any
other list of names (a config's field names, an external library's model list), so the project
has one did-you-mean, not one per table.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def closest(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` that look like ``name``, best first (the one did-you-mean matcher)."""
    return difflib.get_close_matches(name, list(names), n=n, cutoff=0.4)


def did_you_mean(name: str, names: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` naming the closest of ``names`` to ``name``, or ``""``."""
    close = closest(name, names, n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


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

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry``; ``replace`` is for tables whose owner checks conflicts itself (embodiments:
        an identical spec loaded twice, or a user's spec saved over an earlier one)."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)} (known: {', '.join(self.names())})"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def names(self) -> list[str]:
        return sorted(self._entries)
