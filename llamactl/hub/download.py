"""Downloading files into the Hugging Face cache through huggingface_hub (its HTTP session,
headers, token, endpoint and retries), with two things huggingface_hub 2.4.0 does not do:

* resume across processes: each blob is downloaded into a stable `blobs/<etag>.incomplete`
  (under the same per-blob lock file huggingface_hub uses); a later pull continues it with
  a `Range` request instead of starting over;
* integrity: every file is checked against the sha256 the Hub publishes for it (the git
  blob sha1 for small non-LFS files) before it is placed in the cache. A mismatch deletes
  the file and raises IntegrityError (exit 7).

Nothing here touches llamactl's registry."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llamactl import paths
from llamactl.errors import InsufficientResources, IntegrityError, LlamactlError, NetworkError
from llamactl.fsutil import file_lock
from llamactl.hub.cache import (blob_lock, blob_path, bytes_to_download, incomplete_path, link,
                                pointer_path, write_ref)
from llamactl.hub.listing import RemoteFile, endpoint, hub_errors, sync_offline_mode

_HASH_CHUNK = 8 * 1024 * 1024


class DownloadProgress:
    """Callbacks from a download (the CLI draws them; the default draws nothing)."""

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        """action: "download" | "resume" | "verify" """

    def advance(self, n: int) -> None:
        pass

    def file_end(self, filename: str, status: str) -> None:
        """status: "downloaded" | "cached" | "verified" """

    def waiting(self, what: str) -> None:
        pass


def _file_hash(path: Path, algo: str, progress: DownloadProgress | None = None,
               git_size: int | None = None) -> str:
    h = hashlib.new(algo)
    if git_size is not None:
        h.update(f"blob {git_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
            if progress:
                progress.advance(len(chunk))
    return h.hexdigest()


def verify_file(path: Path, rf: RemoteFile, progress: DownloadProgress | None = None) -> bool:
    """True when `path` has the published sha256 (or git blob sha1) and size."""
    size = path.stat().st_size
    if rf.size is not None and size != rf.size:
        return False
    if rf.sha256:
        return _file_hash(path, "sha256", progress) == rf.sha256.lower()
    if rf.blob_id:
        return _file_hash(path, "sha1", progress, git_size=size) == rf.blob_id.lower()
    return True


class _HashingWriter:
    """A file wrapper for huggingface_hub's http_get: hashes and counts what is written.
    If the download rewinds (the server ignored the Range), the running hash is dropped
    and the file is hashed again at the end."""

    def __init__(self, fh: Any, hasher: Any, progress: DownloadProgress | None):
        self.fh, self.hasher, self.progress, self.valid = fh, hasher, progress, True

    def write(self, data: bytes) -> int:
        n = self.fh.write(data)
        self.hasher.update(data)
        if self.progress:
            self.progress.advance(len(data))
        return n

    def tell(self) -> int:
        return self.fh.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        if not (whence == 0 and pos == self.fh.tell()):
            self.valid = False
        return self.fh.seek(pos, whence)

    def truncate(self, size: int | None = None) -> int:
        self.valid = False
        return self.fh.truncate(size)

    def flush(self) -> None:
        self.fh.flush()


def _fetch_blob(repo: str, commit: str, rf: RemoteFile, progress: DownloadProgress) -> tuple[Path, str]:
    """Make blobs/<etag> hold the verified content of `rf`; return (blob, status)."""
    from huggingface_hub import file_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    etag = rf.etag
    assert etag is not None
    blob = blob_path(repo, etag)
    partial = incomplete_path(repo, etag)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(blob_lock(repo, etag)):
        if blob.exists():
            progress.file_start(rf.filename, rf.size, 0, "verify")
            if not verify_file(blob, rf, progress):
                blob.unlink(missing_ok=True)
                raise IntegrityError(
                    f"{rf.filename} in the Hugging Face cache does not match the sha256 published "
                    f"by {repo}; the bad file was deleted",
                    hint="run the pull again to download it afresh")
            return blob, "verified"

        url = hf_hub_url(repo, rf.filename, revision=commit, endpoint=endpoint())
        with hub_errors(repo, rf.filename):
            meta = file_download.get_hf_file_metadata(url, endpoint=endpoint(), retry_on_errors=True)
        size = rf.size if rf.size is not None else meta.size
        headers = build_hf_headers()
        location = meta.location or url
        if urlparse(location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)
            headers.pop("Authorization", None)

        resume = partial.stat().st_size if partial.exists() else 0
        if size is not None and resume > size:
            partial.unlink()
            resume = 0
        hasher = hashlib.sha256() if rf.sha256 else hashlib.sha1()
        if not rf.sha256 and size is not None:
            hasher.update(f"blob {size}\0".encode())
        progress.file_start(rf.filename, size, resume, "resume" if resume else "download")
        if resume:
            with open(partial, "rb") as fh:
                remaining = resume
                while remaining and (chunk := fh.read(min(_HASH_CHUNK, remaining))):
                    hasher.update(chunk)
                    remaining -= len(chunk)
            progress.advance(resume)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            writer = _HashingWriter(fh, hasher, progress)
            try:
                with hub_errors(repo, rf.filename):
                    file_download.http_get(location, writer, resume_size=resume, headers=headers,  # type: ignore[arg-type]
                                           expected_size=size, displayed_filename=rf.filename)
            except OSError as exc:
                if isinstance(exc, LlamactlError):
                    raise
                if exc.errno == errno.ENOSPC:
                    raise InsufficientResources(
                        f"the disk filled up while downloading {rf.filename} "
                        f"({partial.stat().st_size} bytes kept in {partial.parent})",
                        hint="free some space and run the pull again; it resumes") from None
                if "Consistency check failed" in str(exc):
                    raise NetworkError(f"{rf.filename}: the download ended early",
                                       hint="run the pull again; it resumes") from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
        actual_size = partial.stat().st_size
        if writer.valid and (size is None or actual_size == size):
            digest = hasher.hexdigest()
        else:
            digest = _file_hash(partial, "sha256" if rf.sha256 else "sha1",
                                git_size=None if rf.sha256 else actual_size)
        expected = (rf.sha256 or rf.blob_id or "").lower()
        if (size is not None and actual_size != size) or (expected and digest != expected):
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{rf.filename} from {repo} does not match its published sha256 "
                f"(got {digest[:16]}…, expected {expected[:16]}…); the bad file was deleted",
                hint="run the pull again to download it afresh")
        os.chmod(partial, 0o644 & ~_umask())
        os.replace(partial, blob)
        return blob, "downloaded"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



def download(repo: str, commit: str, files: list[RemoteFile], *, revision: str | None = None,
             what: str | None = None, progress: DownloadProgress | None = None) -> list[dict[str, Any]]:
    """Fetch (or verify) `files` of `repo` at `commit` into the HF cache, after checking the
    disk has room for what is missing; `revision` (as asked for) gets a ref. Returns the
    registry's file records, first file first. Nothing is registered here."""
    from huggingface_hub.utils import disable_progress_bars

    from llamactl.fsutil import check_free_space

    sync_offline_mode()
    disable_progress_bars()
    progress = progress or DownloadProgress()
    for rf in files:
        if not rf.etag:
            raise IntegrityError(f"{repo} publishes no hash for {rf.filename}",
                                 hint="llamactl only installs files it can verify")
    check_free_space(paths.hf_hub_cache(), bytes_to_download(repo, files), what=what or repo)
    records = []
    for rf in files:
        blob, status = _fetch_blob(repo, commit, rf, progress)
        pointer = pointer_path(repo, commit, rf.filename)
        link(blob, pointer)
        progress.file_end(rf.filename, status)
        records.append({"filename": rf.filename, "path": str(pointer), "blob": str(blob),
                        "size": blob.stat().st_size, "sha256": rf.sha256, "blob_id": rf.blob_id})
    write_ref(repo, revision, commit)
    return records
