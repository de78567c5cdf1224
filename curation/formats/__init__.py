"""Source formats: one reader (and writer) per public layout, and auto-detection.

| format          | layout                                                              |
|-----------------|---------------------------------------------------------------------|
| lerobot_v3      | LeRobot v3.0: many episodes per parquet/mp4, ``meta/episodes/``     |
| lerobot_v2      | LeRobot v2.1: one parquet + mp4 per episode, ``meta/episodes.jsonl``|
| hdf5_robomimic  | robomimic: ``data/demo_N/{obs/*, actions}`` in one file             |
| hdf5_aloha      | ACT/ALOHA: ``/observations/{qpos,images/<cam>}``, ``/action``       |
| rlds            | RLDS / Open X-Embodiment TFDS folder of TFRecord episodes (no TF)   |
| raw_video       | videos + JSON/CSV sidecar of states, actions and instruction        |

Readers are imported lazily by name so that one format's optional dependency never
breaks another.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from curation.formats.base import EpisodeRef, SourceReader, UnknownLayoutError
from curation.formats.mapping import SourceMapping
from schemas.errors import LoadError

# format -> (reader "module:Class", writer "module:function")
FORMATS: dict[str, tuple[str, str]] = {
    "lerobot_v3": (
        "curation.formats.lerobot_v3:LeRobotV3Reader",
        "curation.formats.lerobot_v3:write_lerobot_v3",
    ),
    "lerobot_v2": (
        "curation.formats.lerobot_v2:LeRobotV2Reader",
        "curation.formats.lerobot_v2:write_lerobot_v2",
    ),
    "hdf5_robomimic": (
        "curation.formats.hdf5_robomimic:RobomimicReader",
        "curation.formats.hdf5_robomimic:write_robomimic_hdf5",
    ),
    "hdf5_aloha": ("curation.formats.hdf5_aloha:AlohaReader", "curation.formats.hdf5_aloha:write_aloha_hdf5"),
    "rlds": ("curation.formats.rlds:RLDSReader", "curation.formats.rlds_write:write_rlds"),
    "raw_video": ("curation.formats.raw_video:RawVideoReader", "curation.formats.raw_video:write_raw_video"),
}


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def reader_class(fmt: str) -> type[SourceReader]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known formats: {sorted(FORMATS)}")
    return _resolve(FORMATS[fmt][0])


def writer(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known formats: {sorted(FORMATS)}")
    return _resolve(FORMATS[fmt][1])


def detect_format(root: str | Path) -> str:
    """The one format whose ``detect`` accepts ``root``; a clear error if none (or several) do."""
    root = Path(root)
    if not root.exists():
        raise LoadError("missing_source", "no such file or folder", root)
    hits = [fmt for fmt in FORMATS if reader_class(fmt).detect(root)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UnknownLayoutError(
            root,
            "LeRobot v3.0/v2.1 (meta/info.json), robomimic HDF5 (data/demo_N), ALOHA HDF5 "
            "(/observations, /action), RLDS (dataset_info.json + *.tfrecord*), raw video + sidecar",
        )
    raise LoadError("ambiguous_layout", f"matches several formats {hits}; name one in the config", root)


def open_source(
    root: str | Path, fmt: str | None = None, mapping: SourceMapping | None = None, source: str | None = None
) -> SourceReader:
    fmt = fmt or detect_format(root)
    return reader_class(fmt)(root, mapping=mapping, source=source)


__all__ = [
    "FORMATS",
    "EpisodeRef",
    "LoadError",
    "SourceMapping",
    "SourceReader",
    "UnknownLayoutError",
    "detect_format",
    "open_source",
    "reader_class",
    "writer",
]
