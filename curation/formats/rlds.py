"""Read RLDS / Open X-Embodiment datasets (TFDS folders of TFRecord episodes), without TensorFlow.

The layout (folder, ``dataset_info.json``, ``features.json``, how TFDS flattens the steps of an
episode into one ``tf.train.Example``) is described in :mod:`curation.formats.rlds_layout`;
the writer is :mod:`curation.formats.rlds_write`.

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

Episodes are un-flattened with the leaf shapes (``features.json``, else the embodiment's
dims); fps comes from ``episode_metadata/fps`` (float32, read back through its shortest
decimal form, so 29.97 stays 29.97) unless the mapping overrides it; timestamps are
``arange(T) / fps`` (RLDS has no standard timestamp field).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from curation.formats.base import EpisodeRef, SourceReader
from curation.formats.mapping import SourceMapping
from curation.formats.rlds_layout import (
    DATASET_INFO,
    FEATURES_JSON,
    FILE_FORMAT,
    FILEPATH_TEMPLATE,
    FPS_META_KEY,
    INSTRUCTION_KEYS,
    META,
    SHARD_X_OF_Y,
    STEPS,
    LeafSpec,
    parse_features,
    version_folder,
)
from curation.formats.tf_example import ExampleDecodeError, Feature, decode_example
from curation.formats.tfrecord import TFRecordError, read_record_at, scan_records
from schemas import Episode, FrameRef, SchemaError, get_embodiment
from schemas.errors import LoadError


def _float32_to_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (float32(29.97) -> 29.97)."""
    return float(np.format_float_positional(np.float32(value), unique=True))


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
