"""Hugging Face Hub I/O for models: one mixin for save / load / push.

Design (ARCHITECTURE.md, "The Hub"):

* **Model folder** written by :meth:`HubMixin.save_pretrained` — the same files locally and on the Hub::

      model.safetensors   the state dict (tied tensors stored once, ``safetensors.torch.save_model``)
      config.json         {format, format_version, schema_version, code_version, model_class,
                           config_class, config: <the frozen dataclass config as a dict>}
      norm_stats.json     {schema_version, stats: {embodiment: EmbodimentStats}} when ``model.norm_stats``
      README.md           model card: YAML header + architecture, parameter count, training data repo and
                          revision, training config, evaluation results (``card_data``, filled by the caller)

  Every file is byte-deterministic for equal weights/config/card, so pushing an unchanged model makes no
  commit. ``from_pretrained`` takes a local folder or a repo id (``snapshot_download``: cached, resumed,
  usable offline once cached), rebuilds the model from the config, and loads strictly: missing and
  unexpected keys are listed by name.
* **Generic over models.** A class opts in with ``class Policy(HubMixin, nn.Module)`` and two class
  attributes: ``config_class`` (a frozen dataclass; ``from_dict``/``to_dict`` are used when defined,
  otherwise a typed conversion that restores tuples and nested dataclasses) and ``config_attr`` (the
  attribute holding the instance's config, ``"cfg"`` by default). ``_from_config`` builds an instance
  (``cls(cfg)`` by default); override it when the constructor needs more.
* **Uploads and errors** live in :mod:`schemas.hub.client` (resumable rounds of commits, retries
  with back-off, client errors translated into :class:`HubError` messages): the transport that
  dataset publishing shares.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from safetensors.torch import load_model, save_model

from schemas import SCHEMA_VERSION, EmbodimentStats, check_schema_version
from schemas.config import from_dict
from schemas.hub.card import (
    CARD_NAME,
    card_body,
    card_header,
    merge_card_header,
    published_card_header,
    with_header,
)
from schemas.hub.client import (
    PublishResult,
    Source,
    UploadSettings,
    download_snapshot,
    local_folder,
    resolve_token,
    upload_files,
)
from schemas.version import MODEL_READABLE_MAJORS

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
NORM_STATS_NAME = "norm_stats.json"
MODEL_FILES = (WEIGHTS_NAME, CONFIG_NAME, NORM_STATS_NAME, CARD_NAME)
MODEL_FORMAT = "gigaworld-policy/model"
MODEL_FORMAT_VERSION = "1.0"
CARD_KEYS = (
    "description",
    "dataset_repo",
    "dataset_revision",
    "train_config",
    "eval_results",
    "license",
    "tags",
)


def code_version() -> str:
    try:
        return importlib.metadata.version("gigaworld-policy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- configs as JSON ---------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"model config must be a dataclass, got {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """``cls.from_dict`` where the class has its own reader, else the project's strict loader."""
    if hasattr(cls, "from_dict"):
        return cls.from_dict(dict(data))
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: config_class {cls.__name__} is not a dataclass")
    return from_dict(cls, data, where)


def _qualname(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# ---- the model card ------------------------------------------------------------------------------


def _human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def render_model_card(model: torch.nn.Module, cfg_dict: dict[str, Any], card_data: Mapping[str, Any]) -> str:
    """README.md of a model folder; deterministic (no timestamps) so unchanged models push no commit."""
    unknown = sorted(set(card_data) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"card_data: unknown keys {unknown} (known: {list(CARD_KEYS)})")
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    name = type(model).__name__
    preset = cfg_dict.get("name")
    header: dict[str, Any] = {
        "library_name": "gigaworld-policy",
        "pipeline_tag": "robotics",
        "tags": ["robotics", "gigaworld-policy", *card_data.get("tags", ())],
    }
    if card_data.get("license"):
        header["license"] = card_data["license"]
    if card_data.get("dataset_repo"):
        header["datasets"] = [card_data["dataset_repo"]]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    lines += [f"# {name}" + (f" ({preset})" if preset else ""), ""]
    if card_data.get("description"):
        lines += [str(card_data["description"]), ""]
    lines += [
        "## Architecture",
        "",
        f"- class: `{_qualname(type(model))}`" + (f", preset `{preset}`" if preset else ""),
        f"- parameters: {total:,} ({_human(total)}), trainable: {trainable:,}",
        f"- schema version {SCHEMA_VERSION}, code version {code_version()}",
        "",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in cfg_dict.items()]
    lines += ["", "## Training data", ""]
    if card_data.get("dataset_repo"):
        rev = card_data.get("dataset_revision") or "main"
        lines.append(f"Dataset repo `{card_data['dataset_repo']}` at revision `{rev}`.")
    else:
        lines.append("Not recorded.")
    if card_data.get("train_config"):
        cfg_json = json.dumps(card_data["train_config"], indent=2, sort_keys=True, default=str)
        lines += ["", "## Training config", "", "```json", cfg_json, "```"]
    results = card_data.get("eval_results")
    if results:
        lines += ["", "## Evaluation results", "", "| benchmark | metric | value |", "|---|---|---|"]
        for bench, val in sorted(results.items()):
            metrics = val if isinstance(val, Mapping) else {"value": val}
            lines += [f"| {bench} | {m} | {v:.4g} |" if isinstance(v, float) else f"| {bench} | {m} | {v} |"
                      for m, v in sorted(metrics.items())]  # fmt: skip
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        f"from {type(model).__module__} import {type(model).__qualname__}",
        f'model = {type(model).__qualname__}.from_pretrained("<repo id or folder>", revision="<commit>")',
        "```",
        "",
    ]
    return "\n".join(lines)


# ---- the mixin -----------------------------------------------------------------------------------


def read_json_object(
    path: Path, missing: str = "missing; not a model folder saved by save_pretrained"
) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file says ``missing`` after its path."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_model_config(folder: Path) -> dict[str, Any]:
    """config.json of a saved model folder, with its format and versions checked."""
    path = Path(folder) / CONFIG_NAME
    data = read_json_object(path)
    if data.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {MODEL_FORMAT!r}")
    if str(data.get("format_version", "")).split(".")[0] != MODEL_FORMAT_VERSION.split(".")[0]:
        raise ValueError(
            f"{path}: format_version {data.get('format_version')!r}, expected {MODEL_FORMAT_VERSION}"
        )
    check_schema_version(data.get("schema_version"), str(path), MODEL_READABLE_MAJORS)
    for key in ("model_class", "config_class", "config"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    return data


def local_model_folder(path_or_repo_id: str | os.PathLike) -> Path | None:
    """The local folder ``path_or_repo_id`` names, or None when it is a Hub repo id (owner/name)."""
    return local_folder(path_or_repo_id, "a model folder")


class HubMixin:
    """Save / load / push for an ``nn.Module`` built from one frozen dataclass config.

    Subclasses set ``config_class`` and, if the config is not in ``self.cfg``, ``config_attr``.
    ``norm_stats`` (embodiment → :class:`~schemas.EmbodimentStats`) travels in ``norm_stats.json``.
    """

    config_class: ClassVar[type]
    config_attr: ClassVar[str] = "cfg"
    norm_stats: dict[str, EmbodimentStats] | None = None

    @classmethod
    def _from_config(cls, cfg: Any) -> Any:
        return cls(cfg)

    def _config(self) -> Any:
        cfg = getattr(self, self.config_attr, None)
        if cfg is None:
            raise AttributeError(f"{type(self).__name__}: no config in self.{self.config_attr}")
        return cfg

    def save_pretrained(
        self, save_directory: str | os.PathLike, card_data: Mapping[str, Any] | None = None
    ) -> Path:
        """Write model.safetensors, config.json, norm_stats.json (if any) and README.md; returns the folder."""
        assert isinstance(self, torch.nn.Module), "HubMixin must be mixed into an nn.Module"
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        cfg_dict = config_to_dict(self._config())
        save_model(self, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "model_class": _qualname(type(self)),
            "config_class": _qualname(type(self._config())),
            "config": cfg_dict,
        }
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        stats_path = out / NORM_STATS_NAME
        if self.norm_stats:
            stats = {k: v.to_dict() for k, v in sorted(self.norm_stats.items())}
            stats_path.write_text(
                json.dumps({"schema_version": SCHEMA_VERSION, "stats": stats}, indent=2, sort_keys=True)
                + "\n"
            )
        elif stats_path.exists():
            stats_path.unlink()  # a stale file from an earlier save would be loaded back
        (out / CARD_NAME).write_text(render_model_card(self, cfg_dict, card_data or {}))
        return out

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
        device: str | torch.device = "cpu",
    ) -> Any:
        """Rebuild from a folder written by :meth:`save_pretrained` or a model repo id (downloaded, cached)."""
        folder = local_model_folder(path_or_repo_id)
        if folder is None:
            folder = download_snapshot(
                str(path_or_repo_id),
                repo_type="model",
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=MODEL_FILES,
            )
        meta = read_model_config(folder)
        stored = meta["model_class"].rsplit(".", 1)[-1]
        if stored != cls.__qualname__.rsplit(".", 1)[-1]:
            raise TypeError(
                f"{folder / CONFIG_NAME}: holds a {meta['model_class']}, not a {_qualname(cls)}; "
                f"load it with {stored}.from_pretrained"
            )
        cfg = config_from_dict(cls.config_class, meta["config"], f"{folder / CONFIG_NAME}: config")
        with torch.device(device):
            model = cls._from_config(cfg)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing; the folder holds no weights")
        try:
            missing, unexpected = load_model(model, weights, strict=False, device=str(device))
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{weights}: weights do not fit {cls.__name__}({cfg!r}): {err}") from err
        if missing or unexpected:
            raise ValueError(
                f"{weights}: state dict does not match {cls.__name__} built from {folder / CONFIG_NAME}: "
                f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}. The checkpoint comes "
                f"from another version of the model code (saved with code {meta.get('code_version')})."
            )
        stats_path = folder / NORM_STATS_NAME
        if stats_path.is_file():
            data = read_json_object(stats_path)
            check_schema_version(data.get("schema_version"), str(stats_path), MODEL_READABLE_MAJORS)
            model.norm_stats = {k: EmbodimentStats.from_dict(v) for k, v in data["stats"].items()}
        return model

    def push_to_hub(
        self,
        repo_id: str,
        revision: str | None = None,
        private: bool = False,
        token: str | None = None,
        commit_message: str | None = None,
        card_data: Mapping[str, Any] | None = None,
        settings: UploadSettings | None = None,
    ) -> PublishResult:
        """save_pretrained into a temporary folder, then :func:`publish_model_folder`."""
        resolve_token(token, f"push to model repo {repo_id!r}")  # before the (possibly long) save
        with tempfile.TemporaryDirectory(prefix="gwp-push-") as tmp:
            folder = self.save_pretrained(tmp, card_data=card_data)
            message = commit_message or f"Upload {type(self).__name__}"
            return publish_model_folder(
                folder, repo_id, revision=revision, private=private, token=token, commit_message=message,
                settings=settings,
            )  # fmt: skip


def publish_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model",
    settings: UploadSettings | None = None,
) -> PublishResult:
    """Push a folder written by ``save_pretrained``; model files it no longer has are deleted remotely."""
    folder = Path(folder)
    read_model_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder / WEIGHTS_NAME}: missing; save the model with save_pretrained")
    files: dict[str, Source] = {n: folder / n for n in MODEL_FILES if (folder / n).is_file()}
    if CARD_NAME in files:
        files[CARD_NAME] = _card_keeping_published_fields(folder / CARD_NAME, repo_id, revision, token)
    return upload_files(
        files,
        repo_id,
        repo_type="model",
        revision=revision,
        private=private,
        token=token,
        commit_message=commit_message,
        last=MODEL_FILES,  # one commit: every revision of a model repo is loadable as it stands
        managed=MODEL_FILES,
        folder=folder,
        settings=settings,
    )


def _card_keeping_published_fields(
    card: Path, repo_id: str, revision: str | None, token: str | None
) -> bytes:
    """The folder's card with the header fields the repo's card already has and this one does not
    set (a license or tags set by hand on the Hub) kept: :mod:`schemas.hub.card`."""
    import huggingface_hub

    text = card.read_text(encoding="utf-8")
    earlier = published_card_header(repo_id, "model", revision, token or huggingface_hub.get_token())
    if not earlier:
        return text.encode()
    generated = card_header(text)
    # what this push sets wins, except tags: the union
    merged = merge_card_header(generated, earlier, chosen=set(generated) - {"tags"})
    return with_header(merged, card_body(text)).encode()
