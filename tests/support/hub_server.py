"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

The real ``huggingface_hub`` / ``datasets`` clients talk to it exactly as they talk to the Hub; the
request and answer shapes are the ones listed in ``/work/shared/HUB_API.md``.

Design:

* **Storage.** Repos are keyed by ``(type, "ns/name")`` with ``type`` in model/dataset/space. Each repo
  holds immutable commits (``Commit``: parent, message, date, ``{path -> FileEntry}`` snapshot) under a
  40-hex id, and refs: branches (``main`` plus created ones) and tags, each pointing at a commit id.
  File contents live on disk, content-addressed: LFS objects by their sha256 under ``lfs/``, regular
  files by their git blob sha1 (``sha1(b"blob {size}\\0" + content)``) under ``git/``. Metadata is in
  memory behind one lock; the server is meant to live as long as one pytest session.
* **Git ids.** A regular file's tree ``oid`` is its git blob sha1; an LFS file's tree ``oid`` is the git
  blob sha1 of its LFS pointer text, with ``lfs.oid`` the sha256 of the content (what the Hub does).
* **Upload.** ``preupload`` answers ``lfs`` for binary-looking samples, large files and known binary
  suffixes, ``regular`` otherwise, and echoes the remote oid so the client can drop unchanged files. The
  LFS batch endpoint hands out ``PUT`` hrefs on this server (no ``actions`` when already stored); the
  ndjson ``commit`` endpoint checks every referenced LFS object is present and ``parentCommit`` matches.
* **Download.** ``resolve`` answers ``HEAD``/``GET`` with ``X-Repo-Commit``, ``ETag`` (sha1 for
  regular, sha256 for LFS), ``X-Linked-Etag``/``X-Linked-Size`` for LFS, and single ``Range`` requests
  (206 / 416). No redirects.
* **Auth.** Writes need ``Authorization: Bearer <any token>`` (401 otherwise); private repos need a token
  to be read (401 ``RepoNotFound``, as the Hub). Every token is the single user ``USER``.
* **Errors.** 404s carry ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``,
  plus ``X-Error-Message`` and a JSON ``{"error": ...}`` body, which the client maps to its exceptions.
* **Faults.** ``HubServer.drop_lfs_uploads(n)`` cuts the connection half-way through the next ``n`` LFS
  ``PUT`` bodies; ``HubServer.fail_requests(pattern, status, n)`` answers the next ``n`` requests whose
  ``"METHOD /path"`` matches the regex with ``status``. The same is reachable over HTTP
  (``POST /_control/faults``) for clients in another process. ``HubServer.requests`` logs every
  request as ``(method, path, status)``.

Not implemented: Xet (clients must run with ``HF_HUB_DISABLE_XET=1``), pull requests (``create_pr``),
multipart LFS, ``cardData`` in repo info, ``lastCommit``/security fields of ``expand``, pagination
(every listing comes in one page), gated repos, repo settings, search/listing of all repos.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

USER = "tester"
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}  # /api/{models|datasets|spaces}/...
_PREFIX_TYPE = {"": "model", "datasets": "dataset", "spaces": "space"}  # /{datasets/|spaces/|}ns/name/...
_BINARY_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".npy",
    ".npz",
    ".mp4",
    ".png",
)
_LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends text files above 10 MB through LFS as well
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: ``sha1(b"blob {size}\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file text that stands for an LFS object in the git tree."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: size, git blob oid, and for LFS files the content sha256."""

    size: int
    blob_id: str  # git blob sha1 of the content (regular) or of the LFS pointer (LFS)
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_id

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            pointer_size = len(lfs_pointer(self.lfs_sha256, self.size))
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": pointer_size}
        return entry


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Branch, tag, or full 40-hex commit id -> commit (None when unknown)."""
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and _HEX40.match(revision) and revision in self.commits:
            oid = revision
        return self.commits.get(oid) if oid else None


class HubError(Exception):
    """An error answer: HTTP status, optional ``X-Error-Code``, human message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra, self.headers = extra or {}, headers or {}


def _repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, f"{repo_type} repository {repo_id!r} not found", "RepoNotFound")


class HubStore:
    """Repos, commits and content-addressed blobs; all metadata changes happen under ``lock``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "git").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self._counter = 0

    # -- blobs ---------------------------------------------------------------------------------
    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def has_lfs(self, sha256: str) -> bool:
        return self.lfs_path(sha256).is_file()

    def put_lfs(self, sha256: str, data: bytes) -> None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise HubError(400, f"LFS object content hashes to {actual}, expected {sha256}")
        tmp = self.lfs_path(sha256).with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(self.lfs_path(sha256))

    def put_regular(self, data: bytes) -> FileEntry:
        oid = git_blob_sha1(data)
        path = self.root / "git" / oid
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return FileEntry(size=len(data), blob_id=oid)

    def content_path(self, entry: FileEntry) -> Path:
        if entry.lfs_sha256 is not None:
            return self.lfs_path(entry.lfs_sha256)
        return self.root / "git" / entry.blob_id

    # -- repos ---------------------------------------------------------------------------------
    def get(self, repo_type: str, repo_id: str, token: str | None = None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_type, repo_id)
        if repo.private and token is None:
            raise HubError(
                401, f"{repo_type} repository {repo_id!r} is private: a token is needed", "RepoNotFound"
            )
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_type, repo_id, private, created_at=_now_iso())
            initial = self._new_commit(repo, None, "initial commit", "", {})
            repo.branches["main"] = initial.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_type, repo_id)

    def _new_commit(
        self, repo: Repo, parent: str | None, title: str, message: str, files: dict[str, FileEntry]
    ) -> Commit:
        self._counter += 1
        date = _now_iso()
        listing = json.dumps(sorted((p, e.blob_id) for p, e in files.items()))
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{title}\n{message}\n{date}\n{self._counter}\n{listing}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, date, dict(files))
        repo.commits[commit.oid] = commit
        return commit

    def commit(self, repo: Repo, branch: str, ops: list[dict[str, Any]], header: dict[str, Any]) -> Commit:
        """Apply ndjson commit operations on top of ``branch``; returns the new commit."""
        with self.lock:
            if branch not in repo.branches:
                raise HubError(404, f"Branch {branch!r} not found in {repo.repo_id}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head.oid:
                raise HubError(412, f"parentCommit {parent_commit} is not the head of {branch} ({head.oid})")
            files = dict(head.files)
            for op in ops:
                key, value = op.get("key"), op.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if not path and key in ("file", "lfsFile", "deletedFile"):
                    raise HubError(400, f"commit operation {key!r} without a path")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"{path}: unsupported encoding {value.get('encoding')!r}")
                    files[path] = self.put_regular(base64.b64decode(value.get("content", "")))
                elif key == "lfsFile":
                    oid, size = value.get("oid"), value.get("size")
                    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str):
                        raise HubError(400, f"{path}: lfsFile needs algo sha256 and an oid")
                    if not self.has_lfs(oid):
                        raise HubError(422, f"{path}: LFS object {oid} was never uploaded")
                    stored = self.lfs_path(oid).stat().st_size
                    if size is not None and int(size) != stored:
                        raise HubError(
                            422, f"{path}: LFS object {oid} has {stored} bytes, commit says {size}"
                        )
                    pointer = git_blob_sha1(lfs_pointer(oid, stored))
                    files[path] = FileEntry(size=stored, blob_id=pointer, lfs_sha256=oid)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path + "/" if path else ""
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del files[p]
                else:
                    raise HubError(400, f"unknown commit operation key {key!r}")
            new = self._new_commit(
                repo,
                head.oid,
                str(header.get("summary") or "Commit"),
                str(header.get("description") or ""),
                files,
            )
            repo.branches[branch] = new.oid
            return new


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    status: int
    remaining: int


class _Faults:
    """Pending injected faults, consumed one per matching request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.drop_lfs_puts = 0
        self.failures: list[_Fault] = []

    def take_drop(self) -> bool:
        with self.lock:
            if self.drop_lfs_puts > 0:
                self.drop_lfs_puts -= 1
                return True
            return False

    def take_failure(self, request_line: str) -> int | None:
        with self.lock:
            for fault in self.failures:
                if fault.remaining > 0 and fault.pattern.search(request_line):
                    fault.remaining -= 1
                    return fault.status
            return None


# Route table: (method, regex over the unquoted-per-segment path, handler name). Repo ids are "ns/name".
_T = r"(?P<api_type>models|datasets|spaces)"
_RID = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_PFX = r"(?:(?P<prefix>datasets|spaces)/)?"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("POST", r"^/_control/faults$", "h_control"),
        ("GET", r"^/api/whoami-v2$", "h_whoami"),
        ("POST", r"^/api/validate-yaml$", "h_validate_yaml"),
        ("POST", r"^/api/repos/create$", "h_create_repo"),
        ("DELETE", r"^/api/repos/delete$", "h_delete_repo"),
        ("GET", rf"^/api/{_T}/{_RID}(?:/revision/(?P<rev>[^/]+))?$", "h_repo_info"),
        ("GET", rf"^/api/{_T}/(?P<bare>[^/]+)$", "h_bare_repo"),
        ("GET", rf"^/api/{_T}/{_RID}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "h_tree"),
        ("POST", rf"^/api/{_T}/{_RID}/paths-info/(?P<rev>[^/]+)$", "h_paths_info"),
        ("GET", rf"^/api/{_T}/{_RID}/refs$", "h_refs"),
        ("GET", rf"^/api/{_T}/{_RID}/commits/(?P<rev>[^/]+)$", "h_commits"),
        ("POST", rf"^/api/{_T}/{_RID}/preupload/(?P<rev>[^/]+)$", "h_preupload"),
        ("POST", rf"^/api/{_T}/{_RID}/commit/(?P<rev>[^/]+)$", "h_commit"),
        ("POST", rf"^/api/{_T}/{_RID}/branch/(?P<branch>[^/]+)$", "h_create_branch"),
        ("DELETE", rf"^/api/{_T}/{_RID}/branch/(?P<branch>[^/]+)$", "h_delete_branch"),
        ("POST", rf"^/api/{_T}/{_RID}/tag/(?P<rev>[^/]+)$", "h_create_tag"),
        ("POST", rf"^/{_PFX}{_RID}\.git/info/lfs/objects/batch$", "h_lfs_batch"),
        ("PUT", rf"^/_lfs/(?P<rtype>model|dataset|space)/{_RID}/(?P<oid>[0-9a-f]{{64}})$", "h_lfs_put"),
        ("POST", rf"^/_lfs_verify/(?P<rtype>model|dataset|space)/{_RID}$", "h_lfs_verify"),
        ("GET", rf"^/{_PFX}{_RID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "h_resolve"),
        ("HEAD", rf"^/{_PFX}{_RID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "h_resolve"),
    ]
]


def _quote_path(raw: str) -> str:
    """Re-quote each segment after unquoting, so that a quoted ``/`` (``%2F``) in a revision stays inside it."""
    return "/".join(quote(unquote(seg), safe="") for seg in raw.split("/"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing ------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # silence stderr; HubServer.requests keeps a log
        pass

    def _dispatch(self) -> None:
        # One handler instance serves every request of a keep-alive connection: reset per request.
        self._status, self._body = 0, None
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        raw_path = url.path
        hub = self.server.hub
        try:
            if not raw_path.startswith("/_control/"):
                status = hub.faults.take_failure(f"{self.command} {unquote(raw_path)}")
                if status is not None:
                    self._read_body()
                    raise HubError(status, f"injected fault: {status}")
            quoted = _quote_path(raw_path)
            for method, pattern, handler in _ROUTES:
                match = pattern.match(quoted)
                if method == self.command and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, handler)(**params)
                    return
            self._read_body()
            raise HubError(404, f"no route for {self.command} {raw_path}")
        except HubError as err:
            self._read_body()  # an unread body would be parsed as the next request of the connection
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message, **err.extra}, status=err.status, headers=headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as err:  # a server bug: answer 500 with the traceback rather than a dropped socket
            self.close_connection = True
            message = f"test hub server bug: {err!r}\n{traceback.format_exc()}"
            self._json({"error": message}, status=500, headers={"X-Error-Message": repr(err)[:200]})
        finally:
            with hub.log_lock:
                hub.requests.append((self.command, unquote(raw_path), self._status))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    def _read_body(self) -> bytes:
        if self._body is not None:
            return self._body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self._body = b"".join(chunks)
        else:
            self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def _json_body(self) -> Any:
        body = self._read_body()
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"request body is not JSON: {err}") from err

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, ctype: str = "") -> None:
        self._status = status
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return auth[len("Bearer ") :].strip() or None

    def _require_token(self) -> str:
        token = self._token()
        if token is None:
            raise HubError(
                401,
                f"Authorization required: {self.command} {urlsplit(self.path).path} writes to the Hub and needs "
                "an 'Authorization: Bearer <token>' header (set HF_TOKEN or pass token=...)",
            )
        return token

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _repo(self, api_type: str, ns: str, name: str, write: bool = False) -> Repo:
        token = self._require_token() if write else self._token()
        return self.server.hub.store.get(_API_TYPE[api_type], f"{ns}/{name}", token)

    def _commit_at(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev} in {repo.repo_id}", "RevisionNotFound")
        return commit

    # -- account / misc ------------------------------------------------------------------------
    def h_whoami(self) -> None:
        self._require_token()
        self._json(
            {"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": {"type": "access_token"}}
        )

    def h_validate_yaml(self) -> None:
        self._json_body()
        self._json({"errors": [], "warnings": []})

    def h_control(self) -> None:
        body = self._json_body()
        hub = self.server.hub
        if body.get("clear"):
            hub.clear_faults()
        if body.get("drop_lfs_uploads"):
            hub.drop_lfs_uploads(int(body["drop_lfs_uploads"]))
        if body.get("fail"):
            fail = body["fail"]
            hub.fail_requests(fail["pattern"], int(fail["status"]), int(fail.get("times", 1)))
        self._json({"ok": True})

    # -- repos ---------------------------------------------------------------------------------
    def h_create_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        name, namespace = body.get("name"), body.get("organization") or USER
        if repo_type not in REPO_TYPES or not name or "/" in name:
            raise HubError(400, f"invalid repo create request: type={repo_type!r} name={name!r}")
        private = bool(body.get("private")) or body.get("visibility") == "private"
        url = f"{self._base_url()}/{URL_PREFIX[repo_type]}{namespace}/{name}"
        try:
            self.server.hub.store.create_repo(repo_type, f"{namespace}/{name}", private)
        except HubError as err:
            err.extra = {"url": url}  # the client reads `url` from the 409 answer when exist_ok=True
            raise
        self._json({"url": url, "name": f"{namespace}/{name}"})

    def h_delete_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        namespace = body.get("organization") or USER
        self.server.hub.store.delete_repo(body.get("type") or "model", f"{namespace}/{body.get('name')}")
        self._send(200, b"")

    def h_bare_repo(self, api_type: str, bare: str) -> None:
        raise _repo_not_found(_API_TYPE[api_type], bare)

    def h_repo_info(self, api_type: str, ns: str, name: str, rev: str = "main") -> None:
        repo = self._repo(api_type, ns, name)
        commit = self._commit_at(repo, rev)
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.blob_id}
            if entry.lfs_sha256 is not None:
                pointer_size = len(lfs_pointer(entry.lfs_sha256, entry.size))
                sibling["lfs"] = {"sha256": entry.lfs_sha256, "size": entry.size, "pointerSize": pointer_size}
            siblings.append(sibling)
        self._json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.files.values()),
            }
        )

    # -- listings ------------------------------------------------------------------------------
    @staticmethod
    def _folder_entry(files: dict[str, FileEntry], folder: str) -> dict[str, Any]:
        prefix = folder + "/"
        listing = json.dumps(sorted((p, e.blob_id) for p, e in files.items() if p.startswith(prefix)))
        return {
            "type": "directory",
            "oid": hashlib.sha1(listing.encode()).hexdigest(),
            "size": 0,
            "path": folder,
        }

    @staticmethod
    def _folders(files: dict[str, FileEntry]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def h_tree(self, api_type: str, ns: str, name: str, rev: str, path: str = "") -> None:
        commit = self._commit_at(self._repo(api_type, ns, name), rev)
        path = path.strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        folders = self._folders(commit.files)
        if path and path not in folders:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        prefix = path + "/" if path else ""
        entries = []
        for folder in sorted(folders):
            rest = folder[len(prefix) :] if folder.startswith(prefix) else None
            if rest and (recursive or "/" not in rest):
                entries.append(self._folder_entry(commit.files, folder))
        for file_path, entry in sorted(commit.files.items()):
            rest = file_path[len(prefix) :] if file_path.startswith(prefix) else None
            if rest and (recursive or "/" not in rest):
                entries.append(entry.tree_entry(file_path))
        self._json(entries)

    def h_paths_info(self, api_type: str, ns: str, name: str, rev: str) -> None:
        commit = self._commit_at(self._repo(api_type, ns, name), rev)
        body = self._read_body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        folders = self._folders(commit.files)
        entries = []
        for path in (p.strip("/") for p in paths):
            if path in commit.files:
                entries.append(commit.files[path].tree_entry(path))
            elif path in folders:
                entries.append(self._folder_entry(commit.files, path))
        self._json(entries)

    def h_refs(self, api_type: str, ns: str, name: str) -> None:
        repo = self._repo(api_type, ns, name)

        def refs(kind: str, table: dict[str, str]) -> list[dict[str, str]]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(table.items())
            ]

        self._json(
            {
                "branches": refs("heads", repo.branches),
                "tags": refs("tags", repo.tags),
                "converts": [],
                "pullRequests": [],
            }
        )

    def h_commits(self, api_type: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(api_type, ns, name)
        commit: Commit | None = self._commit_at(repo, rev)
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": USER, "avatar": None}],
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    # -- refs ----------------------------------------------------------------------------------
    def h_create_branch(self, api_type: str, ns: str, name: str, branch: str) -> None:
        repo = self._repo(api_type, ns, name, write=True)
        start = self._json_body().get("startingPoint") or "main"
        with self.server.hub.store.lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch!r} already exists in {repo.repo_id}")
            repo.branches[branch] = self._commit_at(repo, start).oid
        self._json({})

    def h_delete_branch(self, api_type: str, ns: str, name: str, branch: str) -> None:
        repo = self._repo(api_type, ns, name, write=True)
        with self.server.hub.store.lock:
            if branch == "main" or repo.branches.pop(branch, None) is None:
                raise HubError(404, f"cannot delete branch {branch!r} of {repo.repo_id}", "RevisionNotFound")
        self._json({})

    def h_create_tag(self, api_type: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(api_type, ns, name, write=True)
        tag = self._json_body().get("tag")
        with self.server.hub.store.lock:
            if not tag or tag in repo.tags:
                raise HubError(409, f"Tag {tag!r} already exists in {repo.repo_id}")
            repo.tags[tag] = self._commit_at(repo, rev).oid
        self._json({})

    # -- upload --------------------------------------------------------------------------------
    def h_preupload(self, api_type: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(api_type, ns, name, write=True)
        head = repo.resolve(rev)  # a new branch may not exist yet: then nothing is remote
        answers = []
        for item in self._json_body().get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            binary = b"\0" in sample or path.endswith(_BINARY_SUFFIXES) or size >= _LFS_MIN_SIZE
            remote = head.files.get(path) if head else None
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if binary else "regular",
                    "shouldIgnore": False,
                    "oid": remote.etag if remote else None,
                }
            )
        self._json({"files": answers, "commitOid": head.oid if head else None})

    def h_lfs_batch(self, ns: str, name: str, prefix: str = "") -> None:
        repo_type = _PREFIX_TYPE[prefix]
        self._require_token()
        repo = self.server.hub.store.get(repo_type, f"{ns}/{name}", self._token())
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(
                400, f"LFS batch operation {body.get('operation')!r} is not supported (upload only)"
            )
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size}
            if not self.server.hub.store.has_lfs(oid):
                base = self._base_url()
                answer["actions"] = {
                    "upload": {"href": f"{base}/_lfs/{repo_type}/{repo.repo_id}/{oid}"},
                    "verify": {"href": f"{base}/_lfs_verify/{repo_type}/{repo.repo_id}"},
                }
            objects.append(answer)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            ctype="application/vnd.git-lfs+json",
        )

    def h_lfs_put(self, rtype: str, ns: str, name: str, oid: str) -> None:
        self.server.hub.store.get(rtype, f"{ns}/{name}", token="upload-href")  # the href itself authorises
        if self.server.hub.faults.take_drop():
            self._drop_mid_body()
            return
        self.server.hub.store.put_lfs(oid, self._read_body())
        self._send(200, b"")

    def _drop_mid_body(self) -> None:
        """Read about half of the announced body, then cut the TCP connection without answering."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(max(1, length // 2))
        self.close_connection = True
        self._status = -1
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def h_lfs_verify(self, rtype: str, ns: str, name: str) -> None:
        self._require_token()
        body = self._json_body()
        oid = body.get("oid", "")
        path = self.server.hub.store.lfs_path(oid)
        if not path.is_file() or path.stat().st_size != int(body.get("size", -1)):
            raise HubError(404, f"LFS object {oid} of size {body.get('size')} is not stored", "EntryNotFound")
        self._json({"ok": True})

    def h_commit(self, api_type: str, ns: str, name: str, rev: str) -> None:
        repo = self._repo(api_type, ns, name, write=True)
        if self.query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise HubError(501, "pull requests (create_pr) are not implemented by this test server")
        header: dict[str, Any] = {}
        ops = []
        for line_no, line in enumerate(self._read_body().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise HubError(400, f"commit payload line {line_no} is not JSON: {err}") from err
            if item.get("key") == "header":
                header = item.get("value") or {}
            else:
                ops.append(item)
        commit = self.server.hub.store.commit(repo, rev, ops, header)
        url = f"{self._base_url()}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._json({"commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None, "success": True})

    # -- download ------------------------------------------------------------------------------
    def h_resolve(self, ns: str, name: str, rev: str, path: str, prefix: str = "") -> None:
        repo_type = _PREFIX_TYPE[prefix]
        repo = self.server.hub.store.get(repo_type, f"{ns}/{name}", self._token())
        commit = self._commit_at(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {rev} in {repo.repo_id}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        data = self.server.hub.store.content_path(entry).read_bytes()
        status, body = 200, data
        range_header = self.headers.get("Range")
        if range_header:
            span = self._parse_range(range_header, len(data))
            if span is None:
                raise HubError(
                    416,
                    f"Range {range_header!r} not satisfiable for {len(data)} bytes",
                    headers={"Content-Range": f"bytes */{len(data)}"},
                )
            start, end = span
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers, "application/octet-stream")

    @staticmethod
    def _parse_range(header: str, size: int) -> tuple[int, int] | None:
        """Single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range -> inclusive (start, end), None if unsatisfiable."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if not match or match.group(1) == match.group(2) == "":
            return None
        if match.group(1) == "":
            start, end = max(0, size - int(match.group(2))), size - 1
        else:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        return (start, end) if start <= end and start < size else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """The server object a test holds: start/stop, endpoint URL, request log, fault injection.

    >>> hub = HubServer(tmp_path).start()
    >>> hub.endpoint  # 'http://127.0.0.1:<port>'
    >>> hub.drop_lfs_uploads(1)                       # next LFS PUT is cut half-way
    >>> hub.fail_requests(r"^POST /api/.*/commit/", 503, times=2)
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0):
        self.store = HubStore(root)
        self.faults = _Faults()
        self.requests: list[tuple[str, str, int]] = []  # (method, unquoted path, status; -1 = dropped)
        self.log_lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.hub = self
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- fault injection -----------------------------------------------------------------------
    def drop_lfs_uploads(self, times: int = 1) -> None:
        """Cut the connection half-way through the body of the next ``times`` LFS PUTs."""
        with self.faults.lock:
            self.faults.drop_lfs_puts += times

    def fail_requests(self, pattern: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests whose ``"METHOD /unquoted/path"`` matches ``pattern`` with ``status``."""
        with self.faults.lock:
            self.faults.failures.append(_Fault(re.compile(pattern), status, times))

    def clear_faults(self) -> None:
        with self.faults.lock:
            self.faults.drop_lfs_puts = 0
            self.faults.failures.clear()

    def pending_faults(self) -> int:
        with self.faults.lock:
            return self.faults.drop_lfs_puts + sum(f.remaining for f in self.faults.failures)

    # -- inspection ----------------------------------------------------------------------------
    def requests_matching(self, pattern: str) -> list[tuple[str, str, int]]:
        regex = re.compile(pattern)
        with self.log_lock:
            return [r for r in self.requests if regex.search(f"{r[0]} {r[1]}")]

    def files_at(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The full content of a repo at a revision, read straight from storage (for assertions)."""
        with self.store.lock:
            repo = self.store.get(repo_type, repo_id, token="inspect")
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_type} {repo_id} has no revision {revision!r}")
            return {p: self.store.content_path(e).read_bytes() for p, e in commit.files.items()}

    def history(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[str]:
        """Commit ids of ``branch``, newest first."""
        with self.store.lock:
            repo = self.store.get(repo_type, repo_id, token="inspect")
            out, oid = [], repo.branches[branch]
            while oid:
                out.append(oid)
                oid = repo.commits[oid].parent
            return out
