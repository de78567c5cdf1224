"""Hugging Face Hub I/O: one mixin for save / load / push, and the uploader behind every publish.

Design (DESIGN.md §8, STYLE.md "Hub"):

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
* **Uploads in rounds** (:func:`upload_files`). huggingface_hub 2.4 has no ``upload_large_folder`` and,
  with Xet off, ``upload_folder`` is one commit. So: diff the wanted files against the remote tree (git
  blob sha1 for regular files, sha256 for LFS files) and commit only what differs, in rounds of at most
  ``files_per_commit`` files / ``bytes_per_commit`` bytes (``preupload_lfs_files`` + ``create_commit``
  chained through ``parent_commit``). Files named in ``last`` (the dataset manifest and card) and the
  deletions of stale managed files go in the final commit, so a reader of the branch head never sees a
  card that points at missing shards. A model is small in files, so all of it goes in one commit: every
  revision of a model repo loads as it stands. A transient failure (5xx, 429, a stale parent, a dropped
  connection) re-reads the remote state and goes on; a re-run after a crash does the same, so a partial
  upload is resumed, never redone. When the installed client has ``upload_large_folder`` it moves the
  plain on-disk files first and the rounds only finish the rest.
* **Errors** from the client are translated into :class:`HubError` subclasses whose message names the
  repo, revision or file and says what to do; a push without a token fails before any request.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from safetensors.torch import load_model, save_model

from schemas import SCHEMA_VERSION, EmbodimentStats, check_schema_version

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
NORM_STATS_NAME = "norm_stats.json"
CARD_NAME = "README.md"
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
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_RETRY_STATUS = {408, 409, 412, 429, 500, 502, 503, 504}  # 409/412: the branch moved under us


def code_version() -> str:
    try:
        return importlib.metadata.version("gigaworld-policy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- errors ------------------------------------------------------------------------------------


class HubError(RuntimeError):
    """A Hub operation failed; the message names the repo/revision/file and what to do."""


class HubAuthError(HubError):
    pass


class HubRepoNotFoundError(HubError):
    pass


class HubRevisionNotFoundError(HubError):
    pass


class HubFileNotFoundError(HubError):
    pass


def _endpoint() -> str:
    import huggingface_hub.constants

    return huggingface_hub.constants.ENDPOINT


def resolve_token(token: str | None, action: str) -> str:
    """``token``, else ``HF_TOKEN`` / the saved login; a write without any fails before any request."""
    import huggingface_hub

    found = token or huggingface_hub.get_token()
    if not found:
        raise HubAuthError(
            f"{action}: no Hugging Face token. Set the HF_TOKEN environment variable (a token with write "
            f"access from https://huggingface.co/settings/tokens), run `hf auth login`, or pass token=..."
        )
    return found


def _branches(repo_id: str, repo_type: str, token: str | bool | None) -> str:
    from huggingface_hub import HfApi

    try:
        refs = HfApi().list_repo_refs(repo_id, repo_type=repo_type, token=token)
        return ", ".join(sorted(b.name for b in refs.branches)) or "none"
    except Exception:  # the hint is best effort; the original error is what matters
        return "unknown"


@contextmanager
def hub_errors(
    action: str, repo_id: str, repo_type: str, revision: str | None, token: str | bool | None = None
) -> Iterator[None]:
    """Translate the client's exceptions raised inside into :class:`HubError` with actionable messages."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_type} repo {repo_id!r} on {_endpoint()}"
    rev = revision or "main"
    try:
        yield
    except RepositoryNotFoundError as err:
        raise HubRepoNotFoundError(
            f"{action}: {where} does not exist or is private. Check the repo id; if it is private, set "
            f"HF_TOKEN (or pass token=...) to a token that can read it."
        ) from err
    except RevisionNotFoundError as err:
        raise HubRevisionNotFoundError(
            f"{action}: revision {rev!r} not found in {where} (branches: "
            f"{_branches(repo_id, repo_type, token)}). Pass an existing branch, tag or commit id."
        ) from err
    except RemoteEntryNotFoundError as err:
        raise HubFileNotFoundError(
            f"{action}: a file is missing at revision {rev!r} of {where}: {err}. The repo was probably not "
            f"written by this toolkit, or the upload was interrupted: publish it again."
        ) from err
    except LocalEntryNotFoundError as err:
        raise HubError(
            f"{action}: {where} (revision {rev!r}) is not in the local cache and the Hub cannot be reached "
            f"({err}). Connect, or unset HF_HUB_OFFLINE."
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise HubAuthError(
                f"{action}: {where} refused the request (HTTP {status}). Set HF_TOKEN (or pass token=...) "
                f"to a token with {'write' if 'push' in action or 'publish' in action else 'read'} access."
            ) from err
        raise HubError(f"{action}: {where} (revision {rev!r}) answered HTTP {status}: {err}") from err


def _is_transient(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return err.response is not None and err.response.status_code in _RETRY_STATUS
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    # the client's HTTP library (httpx2 / httpx / requests) has its own transport error hierarchy
    return any(c.__name__ in ("TransportError", "ConnectionError", "Timeout") for c in type(err).__mro__)


# ---- uploading in rounds -------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadSettings:
    files_per_commit: int = 500
    bytes_per_commit: int = 4 << 30
    retries: int = 4  # re-syncs after a transient failure, across the whole upload
    backoff_s: float = 0.5  # doubled after every retry
    use_large_folder: bool = True  # use the client's upload_large_folder when it has one


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    repo_type: str
    revision: str  # the branch written
    commit: str  # head commit of that branch after the upload: pin it for reproducible reads
    new_commits: int  # 0 when nothing changed
    uploaded: tuple[str, ...]
    deleted: tuple[str, ...]

    @property
    def url(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{_endpoint()}/{prefix}{self.repo_id}/tree/{self.commit}"


Source = Path | bytes  # a local file, or generated content


def git_blob_sha1(source: Source) -> str:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_of(source: Source) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _size(source: Source) -> int:
    return len(source) if isinstance(source, bytes) else Path(source).stat().st_size


def _unchanged(source: Source, remote: Any) -> bool:
    """Whether the remote tree entry (``RepoFile`` or None) already holds ``source``'s content."""
    if remote is None or getattr(remote, "blob_id", None) is None or remote.size != _size(source):
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256_of(source)
    return remote.blob_id == git_blob_sha1(source)


def _rounds(paths: list[str], files: Mapping[str, Source], settings: UploadSettings) -> list[list[str]]:
    rounds: list[list[str]] = [[]]
    size = 0
    for p in paths:
        n = _size(files[p])
        if rounds[-1] and (
            len(rounds[-1]) >= settings.files_per_commit or size + n > settings.bytes_per_commit
        ):
            rounds.append([])
            size = 0
        rounds[-1].append(p)
        size += n
    return [r for r in rounds if r]


def upload_files(
    files: Mapping[str, Source],
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with gigaworld-policy",
    last: Sequence[str] = (),
    managed: Sequence[str] = (),
    folder: Path | None = None,
    settings: UploadSettings | None = None,
) -> PublishResult:
    """Make branch ``revision`` (default main) of the repo hold ``files`` (path in repo → source).

    Remote files matching a glob in ``managed`` and absent from ``files`` are deleted. ``folder`` is where
    the on-disk sources live (for ``upload_large_folder``). See the module docstring for the rounds.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    settings = settings or UploadSettings()
    action = f"publish to {repo_type} repo {repo_id!r}"
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{action}: repo id must look like 'owner/name', got {repo_id!r}")
    branch = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", branch):
        raise ValueError(f"{action}: revision {branch!r} is a commit id; pushes go to a branch name")
    token = resolve_token(token, action)
    api = HfApi(token=token)
    with hub_errors(action, repo_id, repo_type, branch, token):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if branch != "main" and branch not in {
            b.name for b in api.list_repo_refs(repo_id, repo_type=repo_type).branches
        }:
            api.create_branch(repo_id, branch=branch, repo_type=repo_type, exist_ok=True)
    large_folder_done = not (
        settings.use_large_folder and folder is not None and hasattr(api, "upload_large_folder")
    )

    uploaded: list[str] = []
    deleted: list[str] = []
    new_commits, attempt = 0, 0
    while True:
        try:
            with hub_errors(action, repo_id, repo_type, branch, token):
                head = api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
                remote = {
                    e.path: e
                    for e in api.list_repo_tree(repo_id, recursive=True, repo_type=repo_type, revision=head)
                    if hasattr(e, "blob_id")
                }
                pending = sorted(p for p in files if not _unchanged(files[p], remote.get(p)))
                stale = sorted(
                    p for p in remote if p not in files and any(fnmatch.fnmatch(p, g) for g in managed)
                )
                if not pending and not stale:
                    return PublishResult(
                        repo_id, repo_type, branch, head, new_commits, tuple(uploaded), tuple(deleted)
                    )
                if not large_folder_done:  # the client's resumable bulk path for plain files on disk
                    on_disk = [p for p in pending if p not in last and files[p] == folder / p]
                    if on_disk:
                        api.upload_large_folder(
                            repo_id, folder, repo_type=repo_type, revision=branch, private=private,
                            allow_patterns=on_disk,
                        )  # fmt: skip
                    large_folder_done = True
                    continue
                body = [p for p in pending if p not in last]
                # the final round carries the `last` files and the deletions (it may have no additions)
                plan = [*_rounds(body, files, settings), [p for p in pending if p in last]]
                for i, paths in enumerate(plan):
                    adds = [
                        CommitOperationAdd(
                            path_in_repo=p,
                            path_or_fileobj=files[p] if isinstance(files[p], bytes) else str(files[p]),
                        )
                        for p in paths
                    ]
                    ops: list[Any] = list(adds)
                    if i == len(plan) - 1:
                        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
                    if not ops:
                        continue
                    if adds:
                        api.preupload_lfs_files(repo_id, additions=adds, repo_type=repo_type, revision=branch)
                    part = f" ({i + 1}/{len(plan)})" if len(plan) > 1 else ""
                    head = api.create_commit(
                        repo_id,
                        ops,
                        commit_message=commit_message + part,
                        repo_type=repo_type,
                        revision=branch,
                        parent_commit=head,
                    ).oid
                    new_commits += 1
                    uploaded += paths
                    if i == len(plan) - 1:
                        deleted += stale
        except HubError as err:
            cause = err.__cause__ or err
            if not _is_transient(cause) or attempt >= settings.retries:
                raise
            time.sleep(settings.backoff_s * 2**attempt)
            attempt += 1
        except Exception as err:
            if not _is_transient(err) or attempt >= settings.retries:
                raise HubError(f"{action} (revision {branch!r}): {type(err).__name__}: {err}") from err
            time.sleep(settings.backoff_s * 2**attempt)
            attempt += 1


def download_snapshot(
    repo_id: str,
    *,
    repo_type: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """``snapshot_download`` (cached, resumable, offline once cached) with :class:`HubError` messages."""
    from huggingface_hub import snapshot_download

    action = f"download {repo_type} repo {repo_id!r}"
    with hub_errors(action, repo_id, repo_type, revision, token):
        return Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=list(allow_patterns) if allow_patterns else None,
            )
        )


# ---- configs as JSON ---------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"model config must be a dataclass, got {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _convert(hint: Any, value: Any, where: str) -> Any:
    """JSON value → the annotated type: tuples from lists, nested dataclasses from dicts."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is not type(None) and (dataclasses.is_dataclass(arm) or typing.get_origin(arm)):
                return _convert(arm, value, where) if value is not None else None
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return (
            tuple(_convert(a, v, where) for a, v in zip(args, value, strict=False)) if args else tuple(value)
        )
    return value


def config_from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    if hasattr(cls, "from_dict"):
        return cls.from_dict(dict(data))
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{where}: config_class {cls.__name__} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__} (known: {sorted(known)})")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; not a model folder saved by save_pretrained") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_model_config(folder: Path) -> dict[str, Any]:
    """config.json of a saved model folder, with its format and versions checked."""
    path = Path(folder) / CONFIG_NAME
    data = _read_json(path)
    if data.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {MODEL_FORMAT!r}")
    if str(data.get("format_version", "")).split(".")[0] != MODEL_FORMAT_VERSION.split(".")[0]:
        raise ValueError(
            f"{path}: format_version {data.get('format_version')!r}, expected {MODEL_FORMAT_VERSION}"
        )
    check_schema_version(data.get("schema_version"), str(path))
    for key in ("model_class", "config_class", "config"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    return data


def _local_or_repo(path_or_repo_id: str | os.PathLike) -> Path | None:
    text = str(path_or_repo_id)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{text}: is a file; expected a model folder or a Hub repo id")
        return local
    if not _REPO_ID.match(text):
        raise FileNotFoundError(f"{text!r}: no such local folder, and not a Hub repo id (owner/name)")
    return None


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
        folder = _local_or_repo(path_or_repo_id)
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
            data = _read_json(stats_path)
            check_schema_version(data.get("schema_version"), str(stats_path))
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
