"""RLDS / Open X-Embodiment on disk: the TFDS folder layout shared by the reader and the writer.

Layout (what ``tfds.builder_from_directory(<version dir>)`` loads)::

    <root>/<dataset_name>/<version>/
        dataset_info.json      DatasetInfo proto as JSON: name, version, fileFormat, splits
                               [{name, shardLengths, numBytes, filepathTemplate}]
        features.json          the FeaturesDict tree (pythonClassName + proto per node)
        <name>-train.tfrecord-00000-of-0000N
        gwp_source.json        our SourceMapping (embodiment, camera roles, fps)

One record = one episode = one ``tf.train.Example``. TFDS flattens nested features with
``/`` and stores a ``Dataset``/``Sequence`` of steps by stacking each leaf over time, so
with T steps (checked against real TFDS output):

    steps/observation/<cam>    bytes_list [T]        one PNG/JPEG per step
    steps/observation/state    float_list [T * Ds]   row-major [T, Ds]
    steps/action               float_list [T * Da]
    steps/reward, discount     float_list [T]
    steps/is_first|is_last|is_terminal   int64_list [T]  (bool -> 0/1)
    steps/language_instruction bytes_list [T]        UTF-8
    episode_metadata/<key>     one value per episode (Text -> bytes, Scalar float32)

T is not stored separately: it is the length of any per-step list. The reader therefore
needs the leaf shapes (``features.json``, else the embodiment's dims) to un-flatten.

Design: this module holds only what both sides must agree on — file and key names, the shard
file names, the features.json leaf specs (:func:`parse_features`) and how a source path names
its version folder (:func:`version_folder`). Reading is :mod:`curation.formats.rlds`, writing
:mod:`curation.formats.rlds_write`; neither needs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.formats.base import LoadError

DATASET_INFO = "dataset_info.json"
FEATURES_JSON = "features.json"
FILE_FORMAT = "tfrecord"
FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SHARD_X_OF_Y = "{index:05d}-of-{count:05d}"

STEPS = "steps"
OBS = "steps/observation/"
STATE_KEY = "steps/observation/state"
ACTION_KEY = "steps/action"
INSTRUCTION_KEY = "steps/language_instruction"
# Where OXE datasets keep the instruction, first match wins (RT-1 uses the observation one).
INSTRUCTION_KEYS = (
    INSTRUCTION_KEY,
    "steps/observation/natural_language_instruction",
    "episode_metadata/language_instruction",
)
META = "episode_metadata/"
FPS_META_KEY = "episode_metadata/fps"


@dataclass(frozen=True)
class LeafSpec:
    """One flattened leaf of a features.json tree."""

    kind: str  # "tensor" | "image" | "text"
    shape: tuple[int | None, ...]  # per step (inside steps) or per episode; None = unknown
    dtype: str
    per_step: bool  # inside a Dataset/Sequence of steps
    encoding: str = ""  # image encoding format


def parse_features(tree: dict[str, Any], where: str = FEATURES_JSON) -> dict[str, LeafSpec]:
    """Flattened ``key -> LeafSpec`` of a features.json tree (nested dicts joined with ``/``)."""
    out: dict[str, LeafSpec] = {}

    def dims(node: dict[str, Any]) -> tuple[int | None, ...]:
        return tuple(None if int(d) < 0 else int(d) for d in node.get("shape", {}).get("dimensions", []))

    def walk(node: dict[str, Any], prefix: str, per_step: bool) -> None:
        if "featuresDict" in node:
            for name, child in node["featuresDict"].get("features", {}).items():
                walk(child, f"{prefix}{name}/", per_step)
        elif "sequence" in node:
            walk(node["sequence"]["feature"], prefix, True)
        elif "image" in node:
            img = node["image"]
            out[prefix[:-1]] = LeafSpec(
                "image", dims(img), img.get("dtype", "uint8"), per_step, img.get("encodingFormat", "")
            )
        elif "text" in node:
            out[prefix[:-1]] = LeafSpec("text", (), "string", per_step)
        elif "tensor" in node:
            t = node["tensor"]
            out[prefix[:-1]] = LeafSpec("tensor", dims(t), t.get("dtype", "float32"), per_step)
        else:
            raise LoadError(
                "bad_features", f"unsupported feature node at {prefix or '<root>'!r}: {sorted(node)}", where
            )

    walk(tree, "", False)
    return out


def default_camera_key(role: str) -> str:
    """Observation key of a camera role: ``image`` for the main (high) camera, else ``<role>_image``."""
    return "image" if role == "high" else f"{role}_image"


def shard_name(dataset_name: str, split: str, index: int, count: int) -> str:
    return FILEPATH_TEMPLATE.format(
        DATASET=dataset_name,
        SPLIT=split,
        FILEFORMAT=FILE_FORMAT,
        SHARD_X_OF_Y=SHARD_X_OF_Y.format(index=index, count=count),
    )


def _is_version_folder(path: Path) -> bool:
    return path.is_dir() and (path / DATASET_INFO).is_file() and any(path.glob(f"*.{FILE_FORMAT}*"))


def version_folder(root: Path) -> Path | None:
    """The TFDS version folder a source path names: the folder itself, or — given a dataset folder
    (``<name>/``) or a data dir holding one dataset (``<data_dir>/<name>/``) — its newest version."""
    if _is_version_folder(root):
        return root
    if not root.is_dir():
        return None
    for depth in (1, 2):
        found = sorted(p for p in root.glob("/".join("*" * depth)) if _is_version_folder(p))
        names = {p.parent for p in found}
        if len(names) == 1:
            return max(found, key=lambda p: _version_key(p.name))
        if len(names) > 1:
            return None  # several datasets: name one of them
    return None


def _version_key(name: str) -> tuple:
    parts = name.split(".")
    return tuple(int(x) if x.isdigit() else -1 for x in parts)
