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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from llamactl import paths
from llamactl.errors import LlamactlError, NotFound
from llamactl.fsutil import atomic_write_json, file_lock, read_json

if TYPE_CHECKING:
    from llamactl.refs import ModelRef

FILE = "registry.json"
VERSION = 1


def registry_path() -> Path:
    return paths.data_dir() / FILE


def _lock_path() -> Path:
    return paths.data_dir() / (FILE + ".lock")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read() -> dict[str, Any]:
    """The document; none yet is an empty one. A file of any other shape (valid JSON or
    not) is an error naming it: it is never read as "no models" and written over."""
    path = registry_path()
    doc = read_json(path, default=None)
    if doc is None:
        return {"version": VERSION, "models": {}}
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not all(isinstance(e, dict) for e in models.values()):
        raise LlamactlError(f"{path} is not a model registry (expected "
                            "{\"version\": 1, \"models\": {NAME: {...}}})",
                            hint="move it aside; the models it listed can be pulled again")
    return doc


def read() -> dict[str, dict[str, Any]]:
    """Every registered model by name: one read of the file (a snapshot; no lock)."""
    return _read()["models"]


def entries() -> list[dict[str, Any]]:
    """Every registered model, sorted by name."""
    models = read()
    return [models[k] for k in sorted(models)]


def get(name: str) -> dict[str, Any] | None:
    return read().get(name)


def lookup(ref: "ModelRef", models: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The entry a parsed catalog or Hub reference (refs.parse) names in `models` (a read()
    snapshot): the tag given or the default one; for an untagged hf.co/OWNER/REPO, its only
    registered quant; for hf://OWNER/REPO/FILE, the entry holding that file."""
    if ref.kind == "catalog":
        return models.get(ref.with_tag(ref.tag or ref.default_tag))
    if ref.kind != "hf":
        return None
    if ref.filename:
        for name in sorted(models):
            entry = models[name]
            if entry.get("repo") == ref.repo and any(f.get("filename") == ref.filename
                                                     for f in entry.get("files", [])):
                return entry
        return None
    entry = models.get(ref.with_tag(ref.tag or ref.default_tag))
    if entry is None and ref.tag is None:
        same = [e for e in models.values() if e.get("model") == ref.with_tag(None)]
        entry = same[0] if len(same) == 1 else None
    return entry


def all_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """An entry's file records: the model's files, then its vision projector's (`mmproj`)."""
    files = list(entry.get("files") or [])
    if isinstance(entry.get("mmproj"), dict):
        files.append(entry["mmproj"])
    return files


def files_present(entry: dict[str, Any]) -> bool:
    """Every file of an entry (its projector too) is there with its recorded size (an entry
    without a file list: its path is a file)."""
    files = entry.get("files") or []
    if not files:
        return bool(entry.get("path")) and os.path.isfile(entry["path"])
    for f in all_files(entry):
        try:
            if os.path.getsize(f["path"]) != f.get("size"):
                return False
        except OSError:
            return False
    return True


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


def model_folder(model: str) -> Path:
    """The folder for the files llamactl makes itself (converted, quantized) for `model`:
    `<data>/models/<model as a safe name>` ("hf.co/OWNER/REPO" -> "OWNER--REPO")."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.replace("hf.co/", "").replace("/", "--"))
    return paths.models_dir() / safe


def local_entry(name: str, model: str, tag: str | None, path: Path,
                **provenance: Any) -> dict[str, Any]:
    """An entry for one file llamactl made (its sha256 computed now): source "local" unless
    `provenance` says otherwise, no Hub repository unless it names one."""
    from llamactl.fsutil import sha256_file

    size = path.stat().st_size
    return {"name": name, "model": model, "tag": tag, "source": "local", "repo": None,
            "revision": None, "requested_revision": None, "license": None, **provenance,
            "files": [{"filename": path.name, "path": str(path), "blob": None, "size": size,
                       "sha256": sha256_file(path)}],
            "path": str(path), "size": size, "pulled_at": now()}


def users_of(path: str, exclude: str | None = None,
             models: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Names of entries (other than `exclude`) that use a file or blob at `path`
    (in `models`, a snapshot from read(), when given)."""
    names = []
    for entry in (sorted(models.values(), key=lambda e: e["name"]) if models is not None
                  else entries()):
        if entry["name"] == exclude:
            continue
        for f in all_files(entry):
            if path in (f.get("path"), f.get("blob")):
                names.append(entry["name"])
                break
    return names
