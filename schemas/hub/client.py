"""Talking to the Hugging Face Hub: error translation, tokens, and the resumable uploader.

* **Uploads in rounds** (:func:`upload_files`). huggingface_hub 2.4 has no ``upload_large_folder`` and,
  with Xet off, ``upload_folder`` is one commit. So: diff the wanted files against the remote tree (git
  blob sha1 for regular files, sha256 for LFS files) and commit only what differs, in rounds of at most
  ``files_per_commit`` files / ``bytes_per_commit`` bytes (``preupload_lfs_files`` + ``create_commit``
  chained through ``parent_commit``). Files named in ``last`` and the deletions of stale managed files go
  in the final commit, so a reader of the branch head never sees a card that points at missing files. A
  transient failure (5xx, 429, a stale parent, a dropped connection) re-reads the remote state and goes on
  with back-off; a 4xx fails at once. When the installed client has ``upload_large_folder`` it moves the
  plain on-disk files first and the rounds only finish the rest.
* **Local or Hub** (:func:`local_folder`): every command that takes a folder also takes a Hub repo id
  in its place; one rule tells them apart (an existing path is local, ``owner/name`` is a repo id,
  anything else is refused naming it), so a typo in a path never becomes a download.
* **Errors** from the client become :class:`HubError` subclasses whose message names the repo, revision
  or file and says what to do; a push without a token fails before any request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_RETRY_STATUS = {408, 409, 412, 429, 500, 502, 503, 504}  # 409/412: the branch moved under us


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
    if not REPO_ID_PATTERN.match(repo_id):
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


def local_folder(
    source: str | os.PathLike, expected: str, repo_id: re.Pattern[str] = REPO_ID_PATTERN
) -> Path | None:
    """The local folder ``source`` names, or None when it is a Hub repo id (matches ``repo_id``); a
    file, or a path that is neither, is refused naming it (``expected``: what the folder holds)."""
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{text}: is a file; expected {expected} or a Hub repo id")
        return local
    if not repo_id.match(text):
        raise FileNotFoundError(f"{text!r}: no such local folder, and not a Hub repo id (owner/name)")
    return None


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
