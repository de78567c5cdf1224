"""RLDS / Open X-Embodiment datasets (TFDS folders of TFRecord episodes), without TensorFlow.

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

Reader: ``list_episodes`` reads ``dataset_info.json`` for the split's shards and only the
12-byte record headers (payloads are skipped), giving one ref per record with its byte
offset. ``load`` reads that one record, checks both CRCs, decodes the Example and keeps
frames as encoded bytes (``FrameRef(kind="encoded")``). A corrupt payload spoils only its
record; a corrupt header becomes one ref that fails to load and the scan resyncs at the next
intact record (:func:`curation.formats.tfrecord.scan_records`); a truncation, or a bad header
with nothing intact after it, loses the rest of the shard as one such ref. When the shard
then frames fewer records than ``dataset_info.json``'s ``shardLengths`` promise, each missing
one is a further failing ref, so the ledger counts every record the dataset declares:
declared = loaded + rejected.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from curation.formats.base import EpisodeRef, SourceReader
from curation.formats.mapping import SIDECAR_NAME, SourceMapping
from curation.formats.tfrecord import (
    ExampleDecodeError,
    Feature,
    TFRecordError,
    TFRecordWriter,
    bytes_feature,
    decode_example,
    encode_example,
    float_feature,
    int64_feature,
    read_record_at,
    scan_records,
)
from schemas import Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError

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


# ---------------------------------------------------------------------------- writer
def default_camera_key(role: str) -> str:
    """Observation key of a camera role: ``image`` for the main (high) camera, else ``<role>_image``."""
    return "image" if role == "high" else f"{role}_image"


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


def shard_name(dataset_name: str, split: str, index: int, count: int) -> str:
    return FILEPATH_TEMPLATE.format(
        DATASET=dataset_name,
        SPLIT=split,
        FILEFORMAT=FILE_FORMAT,
        SHARD_X_OF_Y=SHARD_X_OF_Y.format(index=index, count=count),
    )


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
            "releaseNotes": {version: "Written by curation.formats.rlds.write_rlds."},
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


# ---------------------------------------------------------------------------- reader
def _float32_to_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (float32(29.97) -> 29.97)."""
    return float(np.format_float_positional(np.float32(value), unique=True))


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


class RLDSReader(SourceReader):
    """Episodes of one split of a TFDS/RLDS version folder; see the module docstring.

    Mapping keys are flattened TFDS names (``steps/observation/image``). ``mapping.extra``
    may hold ``fps``, ``split`` (default "train"), ``instruction_key``, and ``action_keys``
    / ``state_keys`` (lists concatenated in order, for datasets whose action is a dict).
    """

    format = "rlds"

    def __init__(self, root: str | Path, mapping: SourceMapping | None = None, source: str | None = None):
        super().__init__(version_folder(Path(root)) or root, mapping, source)
        self.split = str(self.mapping.extra.get("split", "train"))
        self.spec = get_embodiment(self.mapping.embodiment)
        self._leaves: dict[str, LeafSpec] | None = None

    @staticmethod
    def detect(root: Path) -> bool:
        return version_folder(Path(root)) is not None

    # ---- metadata -----------------------------------------------------------------
    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.root / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as err:
            raise LoadError("missing_file", f"no {name}", path) from err
        except json.JSONDecodeError as err:
            raise LoadError("bad_metadata", f"not valid JSON: {err}", path) from err

    @property
    def leaves(self) -> dict[str, LeafSpec]:
        if self._leaves is None:
            path = self.root / FEATURES_JSON
            self._leaves = parse_features(self._read_json(FEATURES_JSON), str(path)) if path.exists() else {}
        return self._leaves

    def shard_files(self) -> list[tuple[Path, int | None]]:
        """(shard path, record count promised by dataset_info.json, or None if unknown)."""
        info = self._read_json(DATASET_INFO)
        if info.get("fileFormat", FILE_FORMAT) != FILE_FORMAT:
            raise LoadError(
                "unsupported_format", f"fileFormat {info.get('fileFormat')!r}; only tfrecord", self.root
            )
        name = info.get("name") or self.root.parent.name
        split = next((s for s in info.get("splits", []) if s.get("name") == self.split), None)
        if split is None or not split.get("shardLengths"):
            files = sorted(self.root.glob(f"*-{self.split}.{FILE_FORMAT}*"))
            if not files:
                raise LoadError(
                    "missing_split",
                    f"no {self.split!r} split in {DATASET_INFO} and no shard files",
                    self.root,
                )
            return [(f, None) for f in files]
        template = split.get("filepathTemplate", FILEPATH_TEMPLATE)
        lengths = [int(n) for n in split["shardLengths"]]
        out = []
        for i, n in enumerate(lengths):
            try:
                fname = self._shard_file_name(template, name, i, len(lengths))
            except (KeyError, IndexError, ValueError) as err:
                raise LoadError(
                    "bad_metadata", f"filepathTemplate {template!r}: {err!r}", self.root / DATASET_INFO
                ) from err
            out.append((self.root / fname, n))
        return out

    def _shard_file_name(self, template: str, name: str, i: int, count: int) -> str:
        return template.format(
            DATASET=name,
            SPLIT=self.split,
            FILEFORMAT=FILE_FORMAT,
            SHARD_X_OF_Y=SHARD_X_OF_Y.format(index=i, count=count),
            SHARD_INDEX=f"{i:05d}",
            NUM_SHARDS=f"{count:05d}",
        )

    def list_episodes(self) -> list[EpisodeRef]:
        refs: list[EpisodeRef] = []

        def add(shard: Path, record: int, offset: int, length: int = 0, error: str = "") -> None:
            locator = {"shard": shard.name, "record": record, "offset": offset, "length": length}
            if error:
                locator["error"] = error
            refs.append(EpisodeRef(self.format, str(self.root), str(shard), len(refs), self.source, locator))

        for shard, promised in self.shard_files():
            if not shard.is_file():
                add(
                    shard,
                    0,
                    0,
                    error=f"shard file missing (dataset_info.json lists {promised} episodes in it)",
                )
                continue
            count, lost = 0, False
            for span in scan_records(shard):
                add(shard, span.index, span.offset, span.length, span.error)
                count, lost = count + 1, lost or bool(span.error)
            if promised is not None and count < promised:
                # records inside skipped or lost bytes have no span: one ledger line each
                where = "lost in the corrupt bytes reported above" if lost else "not in the file"
                for k in range(count, promised):
                    add(
                        shard,
                        k,
                        shard.stat().st_size,
                        error=f"shard holds {count} records, {DATASET_INFO} says {promised}: "
                        f"record {k + 1} of {promised} is {where}",
                    )
            elif promised is not None and not lost and count != promised:
                add(
                    shard,
                    count,
                    shard.stat().st_size,
                    error=f"shard holds {count} records, {DATASET_INFO} says {promised}",
                )
        return refs

    # ---- one episode ----------------------------------------------------------------
    def _record(self, ref: EpisodeRef) -> dict[str, Feature]:
        loc = ref.locator
        label = f"{Path(ref.path).name}#{loc.get('record', ref.index)}"
        if loc.get("error"):
            raise LoadError(
                "corrupt_record",
                f"record {loc['record']} at byte {loc['offset']}: {loc['error']}",
                ref.path,
                label,
            )
        try:
            with open(ref.path, "rb") as f:
                data = read_record_at(f, ref.path, int(loc["offset"]), int(loc["record"]))
        except FileNotFoundError as err:
            raise LoadError("missing_file", "shard file does not exist", ref.path, label) from err
        except TFRecordError as err:
            raise LoadError(
                "corrupt_record", f"record {err.index} at byte {err.offset}: {err.problem}", ref.path, label
            ) from err
        try:
            return decode_example(data)
        except ExampleDecodeError as err:
            raise LoadError(
                "bad_example", f"record {loc['record']} is not a tf.train.Example: {err}", ref.path, label
            ) from err

    def _steps_array(
        self, ex: dict[str, Feature], keys: list[str], dim: int, what: str, path: str, label: str
    ) -> np.ndarray:
        parts = []
        for key in keys:
            key = key if key.startswith(STEPS + "/") or key.startswith(META) else f"{STEPS}/{key}"
            if key not in ex:
                raise LoadError("missing_key", f"no feature {key!r} ({what}); has {sorted(ex)}", path, label)
            feat = ex[key]
            if feat.kind == "bytes":
                raise LoadError("bad_dtype", f"{key} holds bytes, expected numbers ({what})", path, label)
            leaf = self.leaves.get(key)
            width = int(np.prod([d or 1 for d in leaf.shape])) if leaf is not None else None
            values = np.asarray(feat.value, dtype=np.float32)
            if width is None:
                width = dim if len(keys) == 1 else 1
            if values.size % max(width, 1):
                raise LoadError(
                    "bad_shape", f"{key} has {values.size} values, not a multiple of {width}", path, label
                )
            parts.append(values.reshape(-1, width))
        if len({p.shape[0] for p in parts}) > 1:
            raise LoadError("length_mismatch", f"{what} keys {keys} have different step counts", path, label)
        out = np.concatenate(parts, axis=1)
        if out.shape[1] != dim:
            raise LoadError(
                "bad_shape",
                f"{what} has {out.shape[1]} dims, embodiment {self.spec.name} wants {dim}",
                path,
                label,
            )
        return out

    def _instruction(self, ex: dict[str, Feature]) -> str:
        keys = (
            [self.mapping.extra["instruction_key"]]
            if "instruction_key" in self.mapping.extra
            else list(INSTRUCTION_KEYS)
        )
        for key in keys:
            feat = ex.get(key)
            if feat is not None and feat.kind == "bytes":
                for v in feat.value:
                    if v:
                        return v.decode("utf-8", errors="replace")
        return self.mapping.instruction

    def _fps(self, ex: dict[str, Feature]) -> float:
        """``mapping.extra["fps"]`` (config override), else ``episode_metadata/fps``, else control_hz."""
        if "fps" in self.mapping.extra:
            return float(self.mapping.extra["fps"])
        feat = ex.get(FPS_META_KEY)
        if feat is not None and feat.kind == "float" and len(feat) == 1 and feat.value[0] > 0:
            return _float32_to_decimal(float(feat.value[0]))
        return float(self.spec.control_hz)

    def load(self, ref: EpisodeRef) -> Episode:
        ex = self._record(ref)
        path = ref.path
        label = f"{Path(path).name}#{ref.locator.get('record', ref.index)}"
        action_keys = list(self.mapping.extra.get("action_keys", [self.mapping.action_key]))
        state_keys = list(self.mapping.extra.get("state_keys", [self.mapping.state_key]))
        action = self._steps_array(ex, action_keys, self.spec.action_dim, "action", path, label)
        state = self._steps_array(ex, state_keys, self.spec.state_dim, "state", path, label)
        t = action.shape[0]
        if state.shape[0] != t:
            raise LoadError("length_mismatch", f"state has {state.shape[0]} steps, action {t}", path, label)
        if t == 0:
            raise LoadError("empty_episode", "episode has zero steps", path, label)
        for what, arr in (("action", action), ("state", state)):
            bad = int((~np.isfinite(arr)).sum())
            if bad:
                raise LoadError(f"nan_{what}", f"{bad} NaN/inf {what} value(s)", path, label)
        fps = self._fps(ex)
        cameras = {}
        for key, role in self.mapping.cameras.items():
            feat = ex.get(key)
            if feat is None or feat.kind != "bytes":
                raise LoadError("missing_key", f"no image feature {key!r} for camera {role}", path, label)
            if len(feat) != t:
                raise LoadError(
                    "length_mismatch", f"{key} has {len(feat)} frames, the episode {t} steps", path, label
                )
            cameras[role] = FrameRef(
                kind="encoded",
                path=path,
                key=key,
                start=0,
                stop=t,
                fps=fps,
                encoded=feat.value,
                channel_order=self.mapping.channel_order(key),
                pixel_range=self.mapping.pixel_range(key),
            )
        rel = os.path.relpath(path, self.root)
        try:
            return Episode(
                episode_id=self.episode_id(ref, rel, int(ref.locator.get("record", ref.index))),
                source=self.source,
                embodiment=self.spec.name,
                instruction=self._instruction(ex),
                fps=fps,
                state=np.ascontiguousarray(state, dtype=np.float32),
                action=np.ascontiguousarray(action, dtype=np.float32),
                timestamps=np.arange(t, dtype=np.float64) / fps,
                cameras=cameras,
                source_path=path,
                source_index=ref.index,
            ).validate()
        except SchemaError as err:
            raise LoadError("invalid_episode", str(err), path, label) from err


__all__ = [
    "DATASET_INFO",
    "FEATURES_JSON",
    "SIDECAR_NAME",
    "LeafSpec",
    "RLDSReader",
    "default_camera_key",
    "parse_features",
    "shard_name",
    "write_rlds",
]
