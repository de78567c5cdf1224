"""How a ``gwp`` command ends: a user's mistake is one line and exit 2, a bug keeps its traceback.

Every driver builds its parser with :class:`ArgumentParser` and wraps its ``main`` in
:func:`command`, so ``gwp <command> …`` and ``python -m pipelines.<name> …`` end the same way:

* exit 2, one line ``gwp <command>: error: <message>`` on stderr, for a mistake in what the user
  asked: a bad flag (argparse; :meth:`ArgumentParser.error` writes one line, not the usage block),
  :class:`UsageError` (a path that does not exist, an input that is not what its flag says),
  ``curation.config.ConfigError`` (a config file that cannot be read or parsed, a wrong type, an
  unknown field), ``schemas.SchemaError`` (an input file that fails validation) and
  ``schemas.registry.UnknownNameError`` (a preset, model, format or embodiment name not in its
  registry, with the registry's "did you mean" and the known names);
* exit 1, one line, for :class:`JobFailed`: the arguments were fine but the job had nothing to do,
  rejected every input, or could not reach what it needed; the message says why.

Anything else is a bug and propagates with its traceback: the translation is by type, never a
blanket ``except Exception``. A ``FileNotFoundError`` is the user's only when it is raised while a
path the user named is opened, which :func:`reading` marks (it names the flag and the value).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from schemas.errors import ConfigError, SchemaError
from schemas.registry import Registry, UnknownNameError

USAGE_EXIT = 2
FAILED_EXIT = 1


class UsageError(Exception):
    """A mistake on the command line or in a file it names: one line, exit 2."""


class JobFailed(Exception):
    """The job had nothing to do, rejected every input, or could not reach what it needed: exit 1."""


# the project's own "the user asked for something wrong" types (see the module docstring)
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, ConfigError, SchemaError, UnknownNameError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message>``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message}\n")


def say(prog: str, err: BaseException) -> None:
    """One line on stderr: ``<prog>: error: <message>`` (newlines in the message folded)."""
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a driver's ``main(argv)``: known user errors → one line + exit 2, :class:`JobFailed` → 1."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return int(main(argv) or 0)
            except USER_ERRORS as err:
                say(prog, err)
                return USAGE_EXIT
            except JobFailed as err:
                say(prog, err)
                return FAILED_EXIT

        return run

    return wrap


def lookup(kind: str, names: list[str], value: str) -> str:
    """``value`` when it is one of ``names``, else the registry's :class:`UnknownNameError`
    (the "did you mean" every preset lookup gives, :class:`schemas.registry.Registry`)."""
    registry: Registry[str] = Registry(kind)
    for name in names:
        registry.register(name, name)
    return registry.get(value)


def known(kind: str, names: list[str]) -> Callable[[str], str]:
    """An argparse ``type`` accepting one of ``names``, answering anything else as :func:`lookup` does."""

    def check(value: str) -> str:
        try:
            return lookup(kind, names, value)
        except UnknownNameError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    check.__name__ = kind  # argparse names the type in some messages
    return check


def existing_path(flag: str, value: str | Path, what: str = "file or folder") -> Path:
    """``value`` as a Path, or :class:`UsageError` naming the flag when nothing is there."""
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {value}: no such {what}")
    return path


def local_or_repo_id(flag: str, value: str, bare_name_ok: bool = False) -> str:
    """``value`` when it is an existing local path or has the shape of a Hub repo id (``owner/name``,
    or a bare ``name`` where ``bare_name_ok``, as dataset ids may be): it is then downloaded later.
    Otherwise (an absolute path, ``./x``, ``a/b/c`` …) :class:`UsageError`: a missing folder."""
    from schemas.hub.client import REPO_ID_PATTERN

    if Path(value).expanduser().exists():
        return value
    if not value.startswith((".", "~")) and (
        REPO_ID_PATTERN.match(value) or (bare_name_ok and re.fullmatch(r"[A-Za-z0-9][\w.-]*", value))
    ):
        return value
    raise UsageError(f"{flag} {value}: no such folder and not a Hub repo id (owner/name)")


@contextmanager
def reading(flag: str, value: object) -> Iterator[None]:
    """Errors raised while opening the input named by ``flag`` are the user's, and say which input:
    a missing or unreadable file, or content that is not what the flag expects (exit 2); a download
    that failed (``RuntimeError``, the Hub client's errors included) is a failed job (exit 1)."""
    try:
        yield
    except (OSError, ValueError, UnknownNameError) as err:
        raise UsageError(f"{flag} {value}: {err}") from err
    except RuntimeError as err:
        raise JobFailed(f"{flag} {value}: {err}") from err
