"""A small imitation of the Hugging Face Hub on 127.0.0.1, for the real huggingface_hub
client (HF_ENDPOINT pointed at it).

It serves what huggingface_hub 2.4.0 asks for when listing and downloading:
  GET  /api/models/OWNER/REPO[/revision/REV]   model info: sha, siblings (size, blobId,
                                               lfs {sha256, size}), cardData.license, gated
  HEAD /OWNER/REPO/resolve/REV/PATH            X-Repo-Commit, ETag, X-Linked-Etag (the
  GET  /OWNER/REPO/resolve/REV/PATH            sha256 of LFS files), X-Linked-Size; Range -> 206
Gated repositories answer 401 without a token and 403 with a token that has no access
(X-Error-Code: GatedRepo), as the Hub does; model info stays readable.

Fault switches (per file name): `cut_after[name] = N` drops the connection after N body
bytes, once; `fail_after_cut[name] = K` also answers 500 to the next K requests for it;
`corrupt.add(name)` flips a byte of what is served; `slow[name] = (after, bytes_per_s)`
throttles the body after `after` bytes. `redirect_lfs = True` answers LFS files the way
the Hub does: a 302 (with X-Linked-Etag/X-Linked-Size) to a signed "CDN" URL on another host
name (`localhost` instead of `127.0.0.1`), which must be fetched without the token.
Every request is appended to `log`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

_API_RE = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?$")
_RESOLVE_RE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN_RE = re.compile(r"^/cdn/([0-9a-f]{64})$")


@dataclass
class SimFile:
    path: Path
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class SimRepo:
    repo_id: str
    commit: str
    files: dict[str, SimFile] = field(default_factory=dict)
    license: str | None = None
    gated: bool = False
    tags: list[str] = field(default_factory=list)


def _hashes(path: Path) -> tuple[str, str, int]:
    data_sha = hashlib.sha256()
    size = path.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            data_sha.update(chunk)
            git.update(chunk)
    return data_sha.hexdigest(), git.hexdigest(), size


class HubSim:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.repos: dict[str, SimRepo] = {}
        self.tokens_with_access: set[str] = set()
        self.cut_after: dict[str, int] = {}
        self.fail_after_cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.slow: dict[str, tuple[int, float]] = {}
        self.ignore_range = False  # answer 200 with the whole file, as some proxies do
        self.redirect_lfs = False  # answer LFS files with a 302 to a "CDN" on another host name
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], *, license: str | None = None,
                 gated: bool = False, tags: list[str] | None = None) -> SimRepo:
        """Add (or replace) a repository. .gguf and .safetensors files are LFS files."""
        folder = self.root / repo_id.replace("/", "--")
        commit = hashlib.sha1(f"{repo_id}:{len(self.repos)}:{time.time_ns()}".encode()).hexdigest()
        repo = SimRepo(repo_id=repo_id, commit=commit, license=license, gated=gated,
                       tags=list(tags or []))
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                if target.exists() or target.is_symlink():
                    target.unlink()
                try:
                    target.hardlink_to(content)
                except OSError:
                    target.write_bytes(content.read_bytes())
            else:
                target.write_bytes(content)
            sha, git, size = _hashes(target)
            lfs = name.endswith((".gguf", ".safetensors", ".bin"))
            repo.files[name] = SimFile(path=target, size=size, sha256=sha, git_sha1=git, lfs=lfs)
        self.repos[repo_id] = repo
        return repo

    def requests(self, method: str | None = None, path_contains: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.log
                    if (method is None or r["method"] == method) and path_contains in r["path"]]

    def clear_faults(self) -> None:
        self.cut_after.clear()
        self.fail_after_cut.clear()
        self.corrupt.clear()
        self.slow.clear()

    # ------------------------------------------------------------------ serving
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubSim":
        sim = self

        class Handler(_Handler):
            hub = sim

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    hub: HubSim
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -------------------------------------------------------------- helpers
    def _record(self) -> None:
        entry = {"method": self.command, "path": unquote(urlparse(self.path).path),
                 "query": urlparse(self.path).query, "range": self.headers.get("Range"),
                 "auth": self.headers.get("Authorization") is not None}
        with self.hub._lock:
            self.hub.log.append(entry)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _repo(self, repo_id: str, revision: str | None) -> SimRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404 if self._token() else 401, "RepoNotFound", "Repository not found")
            return None
        if revision not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    # -------------------------------------------------------------- verbs
    def do_GET(self) -> None:  # noqa: N802
        self._record()
        path = unquote(urlparse(self.path).path)
        m = _API_RE.match(path)
        if m:
            self._model_info(m.group(1), m.group(2))
            return
        m = _RESOLVE_RE.match(path)
        if m:
            self._resolve(m.group(1), m.group(2), m.group(3), body=True)
            return
        m = _CDN_RE.match(path)
        if m:
            self._cdn(m.group(1), body=True)
            return
        self._error(404, None, "Not found")

    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        path = unquote(urlparse(self.path).path)
        m = _RESOLVE_RE.match(path)
        if m:
            self._resolve(m.group(1), m.group(2), m.group(3), body=False)
            return
        m = _CDN_RE.match(path)
        if m:
            self._cdn(m.group(1), body=False)
            return
        self._error(404, None, "Not found")

    def _cdn(self, sha: str, body: bool) -> None:
        for repo in self.hub.repos.values():
            for name, f in repo.files.items():
                if f.lfs and f.sha256 == sha:
                    self._serve(repo, name, f, body, cdn=True)
                    return
        self._error(404, None, "Not found")

    def _model_info(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        siblings = []
        for name, f in sorted(repo.files.items()):
            sib: dict[str, Any] = {"rfilename": name, "size": f.size, "blobId": f.git_sha1}
            if f.lfs:
                sib["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(sib)
        tags = list(repo.tags)
        card: dict[str, Any] = {}
        if repo.license:
            card["license"] = repo.license
            tags.append(f"license:{repo.license}")
        doc = {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
               "sha": repo.commit, "private": False, "gated": "manual" if repo.gated else False,
               "disabled": False, "tags": tags, "cardData": card, "siblings": siblings,
               "lastModified": "2026-11-01T00:00:00.000Z"}
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _resolve(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if repo.gated:
            token = self._token()
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must "
                            "have access to it and be authenticated to access it. Please log in.")
                return
            if token not in self.hub.tokens_with_access:
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you "
                            "are not in the authorized list.")
                return
        f = repo.files.get(filename)
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
            return
        if self.hub.redirect_lfs and f.lfs:
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/cdn/{f.sha256}?X-Amz-Signature=sim")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{f.etag}"')
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._serve(repo, filename, f, body)

    def _serve(self, repo: SimRepo, filename: str, f: SimFile, body: bool, cdn: bool = False) -> None:
        if body and self.hub.fail_after_cut.get(filename, 0) > 0 and filename not in self.hub.cut_after:
            self.hub.fail_after_cut[filename] -= 1
            self._error(500, None, "Internal Error (simulated)")
            return
        start, end = 0, f.size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng and body and not self.hub.ignore_range:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else f.size - 1
                if start >= f.size:
                    self._error(416, None, "Range Not Satisfiable",
                                {"Content-Range": f"bytes */{f.size}"})
                    return
                status = 206
        length = end - start + 1
        self.send_response(status)
        if not cdn:
            self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.etag}"')
        if f.lfs and not cdn:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length if body else f.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        if not body:
            return
        self._send_body(f, filename, start, length)

    def _send_body(self, f: SimFile, filename: str, start: int, length: int) -> None:
        cut = self.hub.cut_after.pop(filename, None)
        corrupt_at = f.size // 2 if filename in self.hub.corrupt else None
        slow = self.hub.slow.get(filename)
        sent = 0
        pos = start
        chunk_size = 64 * 1024
        try:
            with open(f.path, "rb") as fh:
                fh.seek(start)
                while sent < length:
                    n = min(chunk_size, length - sent)
                    if cut is not None:
                        n = min(n, cut - sent)
                        if n <= 0:
                            self.wfile.flush()
                            self.connection.shutdown(2)  # drop the connection mid-body
                            return
                    data = bytearray(fh.read(n))
                    if corrupt_at is not None and pos <= corrupt_at < pos + len(data):
                        data[corrupt_at - pos] ^= 0xFF
                    self.wfile.write(data)
                    sent += len(data)
                    pos += len(data)
                    if slow is not None and pos >= slow[0]:
                        time.sleep(len(data) / slow[1])
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
