"""Schema version shared by every record, shard and manifest.

Bump the major part when a reader of the old version could no longer read new data.
"""

from __future__ import annotations

from schemas.errors import SchemaVersionError

SCHEMA_VERSION = "1.0"


def check_schema_version(found: str | None, where: str) -> None:
    """Fail with a message naming ``where`` unless ``found`` has our major version."""
    if found is None:
        raise SchemaVersionError(where, "<missing>", SCHEMA_VERSION)
    if str(found).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaVersionError(where, str(found), SCHEMA_VERSION)
