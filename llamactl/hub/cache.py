"""The Hugging Face cache layout, shared with huggingface_hub and other HF tools:
`models--OWNER--REPO/blobs/<etag>` holds the content, `snapshots/<commit>/<filename>` a
relative symlink to it, `refs/<branch>` the commit a branch pointed at. Partial downloads
are `blobs/<etag>.incomplete`; each blob has the lock file huggingface_hub itself takes."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable

from llamactl import paths
from llamactl.hub.listing import RemoteFile


def _folder_name(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def repo_folder(repo: str) -> Path:
    return paths.hf_hub_cache() / _folder_name(repo)


def snapshot_folder(repo: str, commit: str) -> Path:
    return repo_folder(repo) / "snapshots" / commit


def blob_path(repo: str, etag: str) -> Path:
    return repo_folder(repo) / "blobs" / etag


def pointer_path(repo: str, commit: str, filename: str) -> Path:
    return snapshot_folder(repo, commit) / Path(*filename.split("/"))


def incomplete_path(repo: str, etag: str) -> Path:
    return repo_folder(repo) / "blobs" / f"{etag}.incomplete"


def blob_lock(repo: str, etag: str) -> Path:
    # The same lock file huggingface_hub takes for this blob, so the two never write it at once.
    return paths.hf_hub_cache() / ".locks" / _folder_name(repo) / f"{etag}.lock"


def link(blob: Path, pointer: Path) -> None:
    """Point snapshots/<commit>/<filename> at its blob (a copy where symlinks fail)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copy2(blob, pointer)  # no symlinks here: a copy, as huggingface_hub does


def write_ref(repo: str, revision: str | None, commit: str) -> None:
    """refs/<revision> (refs/main when no revision was asked for) = commit."""
    if not revision or revision == commit:
        revision = "main" if not revision else None
    if revision:
        ref = repo_folder(repo) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text() != commit:
            ref.write_text(commit)


def cached_state(repo: str, files: Iterable[RemoteFile]) -> list[tuple[RemoteFile, str, int]]:
    """Per file: ("blob", size) when in the cache, ("partial", bytes) or ("missing", 0)."""
    out = []
    for rf in files:
        etag = rf.etag or ""
        blob = blob_path(repo, etag)
        partial = incomplete_path(repo, etag)
        if etag and blob.exists():
            out.append((rf, "blob", blob.stat().st_size))
        elif etag and partial.exists():
            out.append((rf, "partial", partial.stat().st_size))
        else:
            out.append((rf, "missing", 0))
    return out


def bytes_to_download(repo: str, files: Iterable[RemoteFile]) -> int:
    return sum(max((rf.size or 0) - have, 0)
               for rf, state, have in cached_state(repo, files) if state != "blob")


def prune_empty_folders(deleted: Iterable[Path]) -> None:
    """After files were deleted from the cache: remove the snapshot folders left empty, and
    a repository folder with no blobs (nor partial downloads) and no snapshots left."""
    cache = paths.hf_hub_cache().resolve()
    repos = set()
    for p in deleted:
        try:
            rel = p.parent.resolve().relative_to(cache)
        except (ValueError, OSError):
            continue
        if not rel.parts or not rel.parts[0].startswith("models--"):
            continue
        repo = cache / rel.parts[0]
        repos.add(repo)
        folder = p.parent
        while folder != repo / "snapshots" and folder != repo and folder.is_dir():
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    for repo in repos:
        blobs = repo / "blobs"
        snapshots = repo / "snapshots"
        if (not blobs.exists() or not any(blobs.iterdir())) and \
                (not snapshots.exists() or not any(snapshots.iterdir())):
            shutil.rmtree(repo, ignore_errors=True)
