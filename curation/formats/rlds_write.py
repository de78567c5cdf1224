"""Write episodes as an RLDS / Open X-Embodiment TFDS dataset (TFRecord episodes), without TensorFlow.

The layout is :mod:`curation.formats.rlds_layout`'s; this module produces it. Design: episodes
are streamed into one temporary record file (one ``tf.train.Example`` each, frames encoded
as PNG or JPEG per step), then cut into contiguous shards; ``dataset_info.json``,
``features.json`` (the FeaturesDict tree, built from the first episode: TFDS declares shapes
once) and our ``gwp_source.json`` mapping are written beside them, and the version folder
appears atomically (built under a temporary name, then renamed).

Key choices: camera role ``high`` is written as ``image`` (the OXE name of the main
camera), other roles as ``<role>_image``; fps goes to ``episode_metadata/fps`` (float32;
read back through its shortest decimal form, so 29.97 stays 29.97); timestamps are
``arange(T) / fps`` (RLDS has no standard timestamp field).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from curation.formats.mapping import SourceMapping
from curation.formats.rlds_layout import (
    ACTION_KEY,
    DATASET_INFO,
    FEATURES_JSON,
    FILE_FORMAT,
    FILEPATH_TEMPLATE,
    FPS_META_KEY,
    INSTRUCTION_KEY,
    META,
    OBS,
    STATE_KEY,
    default_camera_key,
    shard_name,
)
from curation.formats.tf_example import Feature, bytes_feature, encode_example, float_feature, int64_feature
from curation.formats.tfrecord import TFRecordWriter
from schemas import Episode, get_embodiment

_PKG = "tensorflow_datasets.core.features."
_CLS_DICT = _PKG + "features_dict.FeaturesDict"
_CLS_DATASET = _PKG + "dataset_feature.Dataset"
_CLS_SEQUENCE = _PKG + "sequence_feature.Sequence"
_CLS_TENSOR = _PKG + "tensor_feature.Tensor"
_CLS_SCALAR = _PKG + "scalar.Scalar"
_CLS_IMAGE = _PKG + "image_feature.Image"
_CLS_TEXT = _PKG + "text_feature.Text"


# ---------------------------------------------------------------------------- features.json
def _tensor(shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
    cls = _CLS_SCALAR if not shape else _CLS_TENSOR
    shp: dict[str, Any] = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {"pythonClassName": cls, "tensor": {"shape": shp, "dtype": dtype, "encoding": "none"}}


def _image(shape: tuple[int, int, int], fmt: str) -> dict[str, Any]:
    return {
        "pythonClassName": _CLS_IMAGE,
        "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8", "encodingFormat": fmt},
    }


def _text() -> dict[str, Any]:
    return {"pythonClassName": _CLS_TEXT, "text": {}}


def _dict(features: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return {"pythonClassName": _CLS_DICT, "featuresDict": {"features": dict(features)}}


def _dataset(step: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": _CLS_DATASET, "sequence": {"feature": step, "length": "-1"}}


def _encode_image(frame_HWC: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(frame_HWC).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(frame_HWC).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _episode_example(
    ep: Episode, cam_keys: dict[str, str], fmt: str, shapes: dict[str, tuple[int, ...]]
) -> bytes:
    from curation.frames import decode_frames

    t = ep.length
    last = np.zeros(t, np.int64)
    last[-1] = 1
    feats: dict[str, Feature] = {
        STATE_KEY: float_feature(ep.state),
        ACTION_KEY: float_feature(ep.action),
        "steps/reward": float_feature(np.zeros(t)),
        "steps/discount": float_feature(np.ones(t)),
        "steps/is_first": int64_feature(1 - np.minimum(np.arange(t), 1)),
        "steps/is_last": int64_feature(last),
        "steps/is_terminal": int64_feature(last),
        INSTRUCTION_KEY: bytes_feature([ep.instruction] * t),
        META + "episode_id": bytes_feature([ep.episode_id]),
        META + "source": bytes_feature([ep.source]),
        META + "file_path": bytes_feature([ep.source_path]),
        FPS_META_KEY: float_feature([ep.fps]),
    }
    for role, key in cam_keys.items():
        frames_THWC = decode_frames(ep.cameras[role])
        if frames_THWC.shape[1:] != shapes[role]:
            raise ValueError(
                f"episode {ep.episode_id}: camera {role} frames are {frames_THWC.shape[1:]}, "
                f"but the dataset declares {shapes[role]} (all episodes must share image sizes)"
            )
        feats[OBS + key] = bytes_feature(_encode_image(f, fmt) for f in frames_THWC)
    return encode_example(feats)


def _features_tree(
    ep: Episode, cam_keys: dict[str, str], fmt: str, shapes: dict[str, tuple[int, ...]]
) -> dict:
    obs = {key: _image(shapes[role], fmt) for role, key in cam_keys.items()}  # type: ignore[arg-type]
    obs["state"] = _tensor((ep.state.shape[1],), "float32")
    step = {
        "observation": _dict(obs),
        "action": _tensor((ep.action.shape[1],), "float32"),
        "reward": _tensor((), "float32"),
        "discount": _tensor((), "float32"),
        "is_first": _tensor((), "bool"),
        "is_last": _tensor((), "bool"),
        "is_terminal": _tensor((), "bool"),
        "language_instruction": _text(),
    }
    meta = {"episode_id": _text(), "source": _text(), "file_path": _text(), "fps": _tensor((), "float32")}
    return _dict({"steps": _dataset(_dict(step)), "episode_metadata": _dict(meta)})


def _copy_bytes(src: BinaryIO, dst: BinaryIO, count: int, chunk: int = 1 << 22) -> None:
    """Copy ``count`` bytes in bounded chunks (shards can be far larger than memory)."""
    while count > 0:
        block = src.read(min(chunk, count))
        if not block:
            raise OSError(f"{getattr(src, 'name', '<file>')}: ended {count} bytes early while cutting shards")
        dst.write(block)
        count -= len(block)


def write_rlds(
    episodes: Iterable[Episode],
    root: str | Path,
    *,
    dataset_name: str = "gwp_dataset",
    version: str = "1.0.0",
    image_encoding: str = "png",
    shards: int = 1,
    camera_keys: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as a TFDS/RLDS dataset; returns ``<root>/<dataset_name>/<version>``.

    All episodes must share embodiment, camera roles and per-camera image size (TFDS
    declares them once). ``camera_keys`` maps role -> observation key (default
    :func:`default_camera_key`). Episodes are streamed into one temporary record file,
    then cut into ``shards`` contiguous shard files (episode order is kept); the version
    folder appears atomically (built under a temporary name, then renamed).
    """
    if image_encoding not in ("png", "jpeg"):
        raise ValueError(f"image_encoding must be 'png' or 'jpeg', got {image_encoding!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    final = Path(root) / dataset_name / version
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=final.parent))
    try:
        first: Episode | None = None
        cam_keys: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        spans: list[tuple[int, int]] = []  # (offset, framed length) in the temporary file
        all_records = work / "all.tfrecord"
        with TFRecordWriter(all_records) as w:
            for ep in episodes:
                ep.validate()
                if first is None:
                    first = ep
                    roles = [r for r in get_embodiment(ep.embodiment).cameras if r in ep.cameras]
                    cam_keys = {r: (camera_keys or {}).get(r, default_camera_key(r)) for r in roles}
                    from curation.frames import decode_frames

                    shapes = {r: tuple(decode_frames(ep.cameras[r], [0]).shape[1:]) for r in roles}
                elif ep.embodiment != first.embodiment or set(ep.cameras) != set(first.cameras):
                    raise ValueError(
                        f"episode {ep.episode_id}: embodiment {ep.embodiment} cameras {sorted(ep.cameras)} differ "
                        f"from the first episode's {first.embodiment} {sorted(first.cameras)}; write one dataset each"
                    )
                offset = w.write(_episode_example(ep, cam_keys, image_encoding, shapes))
                spans.append((offset, w.offset - offset))
        if first is None:
            raise ValueError("write_rlds needs at least one episode")

        # cut the record file into contiguous shards of (nearly) equal episode counts
        shards = min(shards, len(spans))
        bounds = np.linspace(0, len(spans), shards + 1).round().astype(int).tolist()
        lengths, num_bytes = [], 0
        with open(all_records, "rb") as src:
            for i in range(shards):
                lo, hi = bounds[i], bounds[i + 1]
                start, stop = spans[lo][0], spans[hi - 1][0] + spans[hi - 1][1]
                src.seek(start)
                with open(work / shard_name(dataset_name, "train", i, shards), "wb") as dst:
                    _copy_bytes(src, dst, stop - start)
                lengths.append(hi - lo)
                num_bytes += stop - start
        all_records.unlink()

        info = {
            "name": dataset_name,
            "version": version,
            "fileFormat": FILE_FORMAT,
            "moduleName": "curation.formats.rlds",
            "description": f"RLDS episodes written by gigaworld-policy ({first.embodiment}).",
            "releaseNotes": {version: "Written by curation.formats.rlds_write.write_rlds."},
            "splits": [
                {
                    "name": "train",
                    "numBytes": str(num_bytes),
                    "shardLengths": [str(n) for n in lengths],
                    "filepathTemplate": FILEPATH_TEMPLATE,
                }
            ],
        }
        (work / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n")
        tree = _features_tree(first, cam_keys, image_encoding, shapes)
        (work / FEATURES_JSON).write_text(json.dumps(tree, indent=2) + "\n")
        SourceMapping(
            embodiment=first.embodiment,
            cameras={OBS + key: role for role, key in cam_keys.items()},
            state_key=STATE_KEY,
            action_key=ACTION_KEY,
            source=dataset_name,
        ).write(work)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final
