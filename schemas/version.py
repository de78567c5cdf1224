"""Schema version shared by every record, shard and manifest.

Bump the major part when a reader of the old version could no longer read new data.
"""

from __future__ import annotations

from schemas.errors import SchemaVersionError

# 2.0: episode and sample ids derive from the dataset's content fingerprint, no longer from its
# name, so the same episode has another id than under 1.x, and two 1.x datasets may share ids.
SCHEMA_VERSION = "2.0"


def check_schema_version(found: str | None, where: str) -> None:
    """Fail with a message naming ``where`` unless ``found`` has our major version."""
    if found is None:
        raise SchemaVersionError(where, "<missing>", SCHEMA_VERSION)
    if str(found).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaVersionError(where, str(found), SCHEMA_VERSION)
