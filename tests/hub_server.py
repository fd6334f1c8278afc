"""A loopback stand-in for the Hugging Face Hub, for offline tests.

Real, unmodified ``huggingface_hub`` (checked against 2.4.0) and ``torch.hub`` can talk to it: point
``HF_ENDPOINT`` at :attr:`HubStandIn.url` *before* ``huggingface_hub`` is imported (it reads the variable at
import time, so use a subprocess), or pass ``endpoint=`` explicitly.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; ``{repo}`` is ``owner/name``):

* ``GET|HEAD /{repo}/resolve/{rev}/{path}`` (also ``/models/``, ``/datasets/``, ``/spaces/`` prefixed): the file,
  with the headers the Hub sends: for LFS files (by suffix, see :data:`LFS_SUFFIXES`) ``X-Repo-Commit``, quoted
  sha256 ``ETag``, ``X-Linked-Etag``, ``X-Linked-Size``; for regular git files (config.json, README.md) the git
  blob sha1 as ``ETag``; and ``Range: bytes=N-[M]`` support (206). No Xet headers, so clients use plain HTTP.
* ``GET /api/{type}/{repo}`` and ``/api/{type}/{repo}/revision/{rev}``: repo info (``id``, ``sha``, ``siblings``).
* ``GET /api/{type}/{repo}/tree/{rev}[/{path}]?recursive=``: tree listing (``snapshot_download``, ``list_repo_files``).
* ``POST /api/repos/create``: ``create_repo`` (409 with the repo ``url`` when it exists, as the Hub does).
* ``POST /api/{type}/{repo}/preupload/{rev}``: answers ``uploadMode: "regular"`` for every file, so clients send
  content inline (base64) in the commit instead of going through LFS or Xet storage.
* ``POST /api/{type}/{repo}/commit/{rev}``: NDJSON commit (``file``, ``deletedFile``, ``deletedFolder`` lines).
* ``POST /api/validate-yaml`` (README.md uploads) and ``GET /api/agent-harnesses`` (user-agent telemetry).
* ``GET|HEAD /static/{name}``: plain files, like ``download.pytorch.org``, for ``torch.hub.download_url_to_file``.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and ``X-Error-Message``,
which ``huggingface_hub`` turns into ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and
``RemoteEntryNotFoundError`` (a subclass of ``EntryNotFoundError``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_TYPE_BY_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


class _HubError(Exception):
    """An HTTP error answered the way the Hub does (status, ``X-Error-Code``, ``X-Error-Message``, JSON body)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class _Repo:
    """One repository: its branches and, per commit sha, the full file tree at that commit."""

    repo_type: str
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str:
        """The commit sha a branch name or commit sha points to; ``RevisionNotFound`` otherwise."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob with this content (what the Hub calls a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


# Files stored in LFS, as the Hub's default .gitattributes says; everything else (config.json, README.md, .txt)
# is a regular git file, whose ETag is its git blob sha1 rather than a sha256.
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".onnx", ".msgpack", ".pkl", ".npz")


def is_lfs(path: str) -> bool:
    """Whether the Hub would store ``path`` in LFS (by its suffix, as the default ``.gitattributes``)."""
    return path.endswith(LFS_SUFFIXES)


def _file_entry(path: str, content: bytes) -> dict[str, Any]:
    """A tree-listing entry for ``content``; LFS files carry ``lfs`` with their sha256, like on the Hub."""
    entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}
    if is_lfs(path):
        sha256 = hashlib.sha256(content).hexdigest()
        pointer = _LFS_POINTER.format(oid=sha256, size=len(content))
        entry["lfs"] = {"oid": sha256, "size": len(content), "pointerSize": len(pointer)}
    return entry


class HubStandIn:
    """An in-memory Hugging Face Hub served over HTTP on 127.0.0.1 from a background thread.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Every request is appended to
    :attr:`requests` as ``(method, path)`` (the raw, still percent-encoded path, without the query string) and its
    headers to :attr:`request_headers` at the same index.
    """

    def __init__(self, port: int = 0) -> None:
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._static: dict[str, bytes] = {}
        self._truncations: list[tuple[str, int]] = []
        self._counter = itertools.count()
        self.requests: list[tuple[str, str]] = []
        self.request_headers: list[dict[str, str]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubStandIn:
        """Bind 127.0.0.1 and serve from a daemon thread. Returns ``self``."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only while running)."""
        if self._server is None:
            raise RuntimeError("HubStandIn is not running: call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``http://127.0.0.1:54321``: use it as ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ content

    def publish(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        """Create the repo if needed and commit ``files`` (added or overwritten) to ``main``; returns the commit sha."""
        with self._lock:
            repo = self._get_or_create(repo_type, repo_id)
            tree = dict(repo.commits[repo.branches["main"]])
            tree.update({path.lstrip("/"): bytes(content) for path, content in files.items()})
            return self._commit(repo, "main", tree, "Publish files")

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at ``revision`` (a copy); raises ``KeyError`` for an unknown repo."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return dict(repo.commits[repo.resolve(revision)])

    def add_static(self, name: str, content: bytes) -> str:
        """Serve ``content`` at ``/static/{name}`` (GET/HEAD, ``Range`` honoured); returns its URL (needs start())."""
        with self._lock:
            self._static[name.lstrip("/")] = bytes(content)
        return f"{self.url}/static/{name.lstrip('/')}"

    def truncate_next_download(self, path_suffix: str, nbytes: int) -> None:
        """Cut short the next GET whose path ends with ``path_suffix``.

        That response still announces the full ``Content-Length`` but sends only ``nbytes`` bytes of body before
        closing the connection, like a dropped connection. The suffix is matched against both the raw and the
        percent-decoded path. Applies once; call again to cut several downloads.
        """
        with self._lock:
            self._truncations.append((path_suffix, nbytes))

    def clear_requests(self) -> None:
        """Forget the logged requests."""
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()

    # ------------------------------------------------------------------ internals (called under the lock)

    def _get_or_create(self, repo_type: str, repo_id: str) -> _Repo:
        key = (repo_type, repo_id)
        if key not in self._repos:
            repo = _Repo(repo_type, repo_id)
            self._repos[key] = repo
            self._commit(repo, "main", {}, "initial commit")
        return self._repos[key]

    def _commit(self, repo: _Repo, branch: str, tree: dict[str, bytes], message: str) -> str:
        digest = hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}\n{message}\n{next(self._counter)}".encode())
        for path in sorted(tree):
            digest.update(f"\n{path}:{hashlib.sha256(tree[path]).hexdigest()}".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = tree
        repo.dates[sha] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        repo.branches[branch] = sha
        return sha

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _take_truncation(self, raw_path: str) -> int | None:
        with self._lock:
            for i, (suffix, nbytes) in enumerate(self._truncations):
                if raw_path.endswith(suffix) or unquote(raw_path).endswith(suffix):
                    del self._truncations[i]
                    return nbytes
        return None

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP request to the :class:`HubStandIn` that owns the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries a Content-Length
    server_version = "HubStandIn/1.0"

    @property
    def hub(self) -> HubStandIn:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log (see ``HubStandIn.requests`` instead)."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        with self.hub._lock:
            self.hub.requests.append((method, split.path))
            self.hub.request_headers.append(dict(self.headers.items()))
        body = self._read_body()
        segments = [unquote(s) for s in split.path.strip("/").split("/")] if split.path.strip("/") else []
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            self._route(method, split.path, segments, query, body)
        except _HubError as error:
            message = error.message.encode("ascii", "backslashreplace").decode()  # headers must be latin-1
            headers = {"X-Error-Message": message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send_json({"error": error.message}, error.status, headers)
        except Exception as error:  # a bug in the stand-in: answer 500 rather than hang the client
            self._send_json({"error": f"HubStandIn internal error: {error!r}"}, 500)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str], truncate_to: int | None = None) -> None:
        """Send a response; HEAD gets the headers only, ``truncate_to`` cuts the body and closes the connection."""
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        if truncate_to is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if truncate_to is None else body[:truncate_to])
        if truncate_to is not None:
            self.wfile.flush()
            self.close_connection = True

    def _send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_file(self, raw_path: str, content: bytes, headers: dict[str, str]) -> None:
        """Send a file, honouring ``Range: bytes=N-[M]`` on GET and any pending truncation."""
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}
        status, body = 200, content
        match = _RANGE.fullmatch(self.headers.get("Range", "").strip()) if self.command == "GET" else None
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(content) - 1, len(content) - 1)
            if start >= len(content) or start > end:
                raise _HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        truncate_to = self.hub._take_truncation(raw_path) if self.command == "GET" else None
        self._send(status, body, headers, truncate_to)

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, raw_path: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        hub = self.hub
        if seg[:1] == ["static"] and method in ("GET", "HEAD"):
            content = hub._static.get("/".join(seg[1:]))
            if content is None:
                raise _HubError(404, "Not found")
            return self._send_file(raw_path, content, {})
        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:], query, body)
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if seg[:1] and seg[0] in _TYPE_BY_PLURAL:
                repo_type, seg = _TYPE_BY_PLURAL[seg[0]], seg[1:]
            repo_id, action, rest = _split_repo(seg, {"resolve"})
            if action == "resolve" and len(rest) >= 2:
                return self._resolve(raw_path, repo_type, repo_id, rest[0], "/".join(rest[1:]))
        raise _HubError(404, f"HubStandIn: no route for {method} {raw_path}")

    def _route_api(self, method: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        hub = self.hub
        if seg == ["agent-harnesses"]:
            return self._send_json({"standardEnvVars": [], "harnesses": {}})
        if seg == ["validate-yaml"] and method == "POST":
            return self._send_json({"errors": [], "warnings": []})
        if seg == ["whoami-v2"]:
            return self._send_json({"type": "user", "name": "stand-in", "orgs": [], "auth": {"type": "access_token"}})
        if seg == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if not seg or seg[0] not in _TYPE_BY_PLURAL:
            raise _HubError(404, f"HubStandIn: no API route for {method} /api/{'/'.join(seg)}")
        repo_type = _TYPE_BY_PLURAL[seg[0]]
        repo_id, action, rest = _split_repo(seg[1:], {"revision", "tree", "preupload", "commit"})
        with hub._lock:  # build the answer under the lock, send it outside
            repo = hub._repo(repo_type, repo_id)
            if method == "GET" and action in (None, "revision"):
                payload: Any = self._info(repo, rest[0] if rest else "main")
            elif method == "GET" and action == "tree" and rest:
                payload = self._tree(repo, rest[0], "/".join(rest[1:]), query)
            elif method == "POST" and action == "preupload" and rest:
                payload = self._preupload(repo, rest[0], json.loads(body or b"{}"))
            elif method == "POST" and action == "commit" and rest:
                payload = self._apply_commit(repo, rest[0], body, query)
            else:
                raise _HubError(404, f"HubStandIn: no API route for {method} /api/{'/'.join(seg)}")
        self._send_json(payload)

    def _resolve(self, raw_path: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            content = repo.commits[sha].get(path)
        if content is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        if is_lfs(path):
            etag = f'"{hashlib.sha256(content).hexdigest()}"'
            headers = {"X-Repo-Commit": sha, "ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(len(content))}
        else:
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(content)}"'}
        self._send_file(raw_path, content, headers)

    def _create_repo(self, payload: dict[str, Any]) -> None:
        hub = self.hub
        name, organization = payload.get("name"), payload.get("organization")
        if not name:
            raise _HubError(400, "Missing repo name")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Unsupported repo type {repo_type!r}")
        repo_id = f"{organization}/{name}" if organization else f"stand-in/{name}"
        with hub._lock:
            exists = (repo_type, repo_id) in hub._repos
            repo = hub._get_or_create(repo_type, repo_id)
            url = hub._repo_url(repo)
        if exists:
            return self._send_json({"error": "You already created this repo", "url": url}, 409)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo: _Repo, revision: str) -> dict[str, Any]:
        sha = repo.resolve(revision)
        tree = repo.commits[sha]
        siblings = []
        for path in sorted(tree):
            entry = _file_entry(path, tree[path])
            sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:
                lfs = entry["lfs"]
                sibling["lfs"] = {"size": entry["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0]
        date = repo.dates[sha]
        info = {"id": repo.repo_id, "author": author, "sha": sha, "private": False, "gated": False, "disabled": False}
        info.update({"lastModified": date, "createdAt": repo.dates[next(iter(repo.commits))], "tags": []})
        info.update({"downloads": 0, "likes": 0, "siblings": siblings})
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
        tree = repo.commits[repo.resolve(revision)]
        recursive = query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise _HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        files: dict[str, dict[str, Any]] = {}
        folders: set[str] = set()
        for p in sorted(tree):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files[p] = _file_entry(p, tree[p])
        entries: list[dict[str, Any]] = [
            {"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
            for d in sorted(folders)
        ]
        return entries + list(files.values())

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        tree = repo.commits[repo.resolve(revision)]
        answers = []
        for item in payload.get("files", []):
            existing = tree.get(item["path"])
            oid = git_blob_sha1(existing) if existing is not None else None
            # "regular" for every file: content comes inline (base64) in the commit, never through LFS or Xet.
            answers.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": answers, "commitOid": repo.resolve(revision)}

    def _apply_commit(self, repo: _Repo, branch: str, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        if query.get("create_pr") in ("1", "true", "True"):
            raise _HubError(400, "HubStandIn does not support pull requests (create_pr)")
        if branch not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(repo.commits[repo.branches[branch]])
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                raw = value["content"]
                tree[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {p: c for p, c in tree.items() if not p.startswith(folder)}
            elif key != "header":
                raise _HubError(400, f"HubStandIn does not support {key!r} commit operations (LFS/Xet uploads)")
        sha = self.hub._commit(repo, branch, tree, header.get("summary", ""))
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.hub._repo_url(repo)}/commit/{sha}",
            "commitMessage": header.get("summary", ""),
            "hookOutput": "",
            "pullRequestUrl": None,
        }


def _split_repo(seg: list[str], actions: set[str]) -> tuple[str, str | None, list[str]]:
    """Split ``owner/name/{action}/rest...`` (or ``name/{action}/...``) into ``(repo_id, action, rest)``."""
    if len(seg) >= 3 and seg[2] in actions:
        return f"{seg[0]}/{seg[1]}", seg[2], seg[3:]
    if len(seg) >= 2 and seg[1] in actions:
        return seg[0], seg[1], seg[2:]
    return "/".join(seg), None, []
