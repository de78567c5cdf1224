"""Errors raised at schema boundaries.

Every message names the record, the field and the problem, so that a bad row found
deep inside a Ray job still tells a person what to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.manifest import Rejection


class SchemaError(ValueError):
    """A record failed validation: ``<Record>.<field>: <problem>``."""

    def __init__(self, record: str, field: str, problem: str):
        self.record = record
        self.field = field
        self.problem = problem
        super().__init__(f"{record}.{field}: {problem}")


class SchemaVersionError(ValueError):
    """Data written under another schema version than this code reads."""

    def __init__(self, where: str, found: str, expected: str):
        self.where = where
        self.found = found
        self.expected = expected
        super().__init__(
            f"{where}: written with schema version {found!r}, this code reads {expected!r}; "
            "re-run curation with this version or install the matching gigaworld-policy"
        )


class ConfigError(ValueError):
    """A config value or file is wrong: ``<where>.<field>: <problem>``."""

    def __init__(self, where: str, field: str, problem: str):
        self.where, self.field, self.problem = where, field, problem
        # "<file>" (or ""): the problem is the whole table or file (missing, unparseable), not one field
        whole = field in ("<file>", "")
        super().__init__(f"{where}: {problem}" if whole else f"{where}.{field}: {problem}")


class LoadError(Exception):
    """An episode (or a whole file) could not be read. ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str, path: str | Path, episode: str = ""):
        self.reason = reason
        self.detail = detail
        self.path = str(path)
        self.episode = episode
        super().__init__(f"{path}{'#' + episode if episode else ''}: {reason}: {detail}")

    def to_rejection(self, stage: str = "load", source: str = "") -> Rejection:
        from schemas.manifest import Rejection  # the ledger record; manifest imports this module

        return Rejection(
            stage=stage,
            reason=self.reason,
            path=self.path,
            episode=self.episode or f"{Path(self.path).name}#?",
            detail=self.detail,
            source=source,
        )
