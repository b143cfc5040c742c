"""What is on this machine: model names -> files, sizes, sha256, provenance.

One JSON document, `<data>/registry.json`: {"version": 1, "models": {NAME: ENTRY}}. Every
change is read-modify-write under an inter-process lock, written to a temporary file,
fsynced and renamed over the old one, so a process killed at any moment leaves either the
old or the new registry. Reading takes no lock.

An entry (a plain dict, JSON-ready):
    name        "llama3.2-1b:q4_k_m", "hf.co/OWNER/REPO:q8_0", or a local name
    model, tag  the parts of the name
    source      "hub" | "local"
    repo, revision, requested_revision   Hub provenance (None for local files)
    files       [{"filename", "path", "blob", "size", "sha256"}]  first part first
    path        the file to load (the first part of a split model)
    size        total bytes
    license     license family id or None
    pulled_at   ISO time (UTC)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Any, Iterator

from llamactl import paths
from llamactl.errors import NotFound
from llamactl.fsutil import atomic_write_json, file_lock, read_json

FILE = "registry.json"
VERSION = 1


def registry_path() -> Path:
    return paths.data_dir() / FILE


def _lock_path() -> Path:
    return paths.data_dir() / (FILE + ".lock")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read() -> dict[str, Any]:
    doc = read_json(registry_path(), default=None)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        return {"version": VERSION, "models": {}}
    return doc


def entries() -> list[dict[str, Any]]:
    """Every registered model, sorted by name."""
    models = _read()["models"]
    return [models[k] for k in sorted(models)]


def get(name: str) -> dict[str, Any] | None:
    return _read()["models"].get(name)


def require(name: str) -> dict[str, Any]:
    entry = get(name)
    if entry is None:
        raise NotFound(f"{name!r} is not on this machine",
                       hint="see `llamactl list`, or fetch it with `llamactl pull`")
    return entry


def _clean_stale_temporaries(folder: Path) -> None:
    # Under the lock nobody else is writing: temporaries left by a killed writer are stale.
    for tmp in folder.glob(f".{FILE}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def editing() -> Iterator[dict[str, Any]]:
    """Yield the models dict under the lock; what it holds at the end is written
    atomically (nothing is written if the block raises)."""
    paths.ensure(paths.data_dir())
    with file_lock(_lock_path()):
        doc = _read()
        yield doc["models"]
        doc["version"] = VERSION
        _clean_stale_temporaries(registry_path().parent)
        atomic_write_json(registry_path(), doc)


def put(entry: dict[str, Any]) -> dict[str, Any]:
    entry = dict(entry)
    entry.setdefault("pulled_at", now())
    with editing() as models:
        models[entry["name"]] = entry
    return entry


def remove(name: str) -> dict[str, Any]:
    with editing() as models:
        if name not in models:
            raise NotFound(f"{name!r} is not on this machine", hint="see `llamactl list`")
        return models.pop(name)


def users_of(path: str, exclude: str | None = None) -> list[str]:
    """Names of entries (other than `exclude`) that use a file or blob at `path`."""
    names = []
    for entry in entries():
        if entry["name"] == exclude:
            continue
        for f in entry.get("files", []):
            if path in (f.get("path"), f.get("blob")):
                names.append(entry["name"])
                break
    return names
