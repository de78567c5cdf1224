"""Schema version shared by every record, shard and manifest.

Bump the major part when a reader of the old version could no longer read new data. Readers
of this version also read the data majors in ``DATA_READABLE_MAJORS`` (older data they still
understand); the writers always stamp ``SCHEMA_VERSION``.
"""

from __future__ import annotations

from schemas.errors import SchemaVersionError

# 2.0: episode and sample ids derive from the dataset's content fingerprint, no longer from its
# name, so the same episode has another id than under 1.x, and two 1.x datasets may share ids.
# 3.0: samples and episodes may carry no actions (action-free video: an Episode's action is
# [T, 0], a Sample's action_mask all False). A 2.x reader refuses such rows ("no valid action
# dim"), so it could not read 3.0 data: a major bump, which makes a 2.x reader say so up front.
# Data written under 2.x is still read: every 2.x row is a valid 3.0 row (ids did not change).
SCHEMA_VERSION = "3.0"
_MAJOR = SCHEMA_VERSION.split(".")[0]
DATA_READABLE_MAJORS = ("2", _MAJOR)
# A saved model's config and normalisation stats did not change in 2.0 or 3.0 (only data did):
# a model saved under 1.x or 2.x still loads.
MODEL_READABLE_MAJORS = ("1", "2", _MAJOR)


def check_schema_version(
    found: str | None, where: str, readable: tuple[str, ...] = DATA_READABLE_MAJORS
) -> None:
    """Fail with a message naming ``where`` unless ``found``'s major version is ``readable``
    (by default: the data majors this code reads)."""
    if found is None:
        raise SchemaVersionError(where, "<missing>", SCHEMA_VERSION)
    if str(found).split(".")[0] not in readable:
        raise SchemaVersionError(where, str(found), SCHEMA_VERSION)
