"""Schema version shared by every record, shard and manifest.

Bump the major part when a reader of the old version could no longer read new data. Readers
of this version also read the data majors in ``DATA_READABLE_MAJORS`` (older data they still
understand); the writers always stamp ``SCHEMA_VERSION``.
"""

from __future__ import annotations

from schemas.errors import SchemaVersionError

# 2.0: episode and sample ids derive from the dataset's content fingerprint, no longer from its
# name, so the same episode has another id than under 1.x, and two 1.x datasets may share ids.
# 3.0: (a) instructions are token sequences stored once per unique instruction beside the shards
# (meta/text_embeddings.safetensors, indexed in the manifest's "text"); samples no longer carry a
# pooled text_embedding column, so a 2.x dataset has nothing to condition on; (b) samples and
# episodes may carry no actions (action-free video: an Episode's action is [T, 0], a Sample's
# action_mask all False), which a 2.x reader would refuse. Data written under 2.x is not read.
# 3.1: samples may store their frames' codec latents (the optional ``latents`` column, the
# manifest's ``latents`` naming the codec); a 3.0 reader reads the columns it knows and skips it,
# and a 3.1 reader reads 3.0 shards (no latents: the codec encodes the frames), so a minor bump.
SCHEMA_VERSION = "3.1"
_MAJOR = SCHEMA_VERSION.split(".")[0]
DATA_READABLE_MAJORS = (_MAJOR,)
# A saved model's weights, config and normalisation stats read as before under 2.0 and 3.0; the
# one exception, a 2.x policy's pooled-text settings, is refused by PolicyConfig with its own
# message (the model would need retraining on token sequences).
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
