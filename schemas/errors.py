"""Errors raised at schema boundaries.

Every message names the record, the field and the problem, so that a bad row found
deep inside a Ray job still tells a person what to fix.
"""

from __future__ import annotations


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
