"""The known models: names, aliases, repositories, default quant, license family.

The built-in catalog is data (llamactl/data/catalog.json). A user may add or override
entries in `<config>/catalog.json` with the same shape ({"models": [ {...}, ... ]}); an
entry whose name or alias matches a built-in one replaces it. Nothing here touches the
network or imports anything heavy."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamactl import paths
from llamactl.errors import LlamactlError, NotFound, UsageError

_BUILTIN = Path(__file__).resolve().parent / "data" / "catalog.json"
USER_FILE = "catalog.json"


@dataclass
class CatalogEntry:
    name: str
    aliases: list[str] = field(default_factory=list)
    title: str = ""
    official_repo: str | None = None
    gguf_repos: list[str] = field(default_factory=list)
    default_tag: str = "q4_k_m"
    license: str | None = None
    params_total: int | None = None
    params_active: int | None = None
    experts: int | None = None
    context_length: int | None = None
    draft: str | None = None          # the catalog model `--draft auto` pairs with this one
    draft_note: str | None = None     # why there is none, when there is none
    source: str = "builtin"  # "builtin" or "user"

    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry(raw: dict[str, Any], source: str, where: Path) -> CatalogEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise LlamactlError(f"{where}: every model needs a \"name\"",
                            hint="see `llamactl models --json` for the shape of an entry")
    known = set(CatalogEntry.__dataclass_fields__) - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LlamactlError(f"{where}: model {raw['name']!r} has unknown field(s): {', '.join(unknown)}",
                            hint=f"known fields: {', '.join(sorted(known))}")
    values = dict(raw)
    values["name"] = values["name"].lower()
    values["aliases"] = [str(a).lower() for a in values.get("aliases") or []]
    values["gguf_repos"] = [str(r) for r in values.get("gguf_repos") or []]
    values["default_tag"] = str(values.get("default_tag") or "q4_k_m").lower()
    return CatalogEntry(**values, source=source)


def _read(path: Path, source: str) -> list[CatalogEntry]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LlamactlError(f"cannot read the catalog {path}: {exc}",
                            hint="fix or move the file aside") from exc
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        raise LlamactlError(f"{path}: expected {{\"models\": [...]}}")
    return [_entry(raw, source, path) for raw in models]


def user_catalog_path() -> Path:
    return paths.config_dir() / USER_FILE


def load() -> list[CatalogEntry]:
    """Built-in entries, then the user's; a user entry sharing a name or alias with a
    built-in one replaces it (in its place)."""
    entries = _read(_BUILTIN, "builtin")
    for user in _read(user_catalog_path(), "user"):
        clash = set(user.names())
        for i, old in enumerate(entries):
            if clash & set(old.names()):
                entries[i] = user
                break
        else:
            entries.append(user)
    return entries


def find(name: str) -> CatalogEntry | None:
    """The entry whose name or alias is `name` (case-insensitive), or None."""
    wanted = name.strip().lower()
    for entry in load():
        if wanted in entry.names():
            return entry
    return None


def unknown(name: str) -> NotFound:
    """The error for a name that is no catalog model (exit 4), naming the known ones."""
    known = ", ".join(e.name for e in load())
    return NotFound(f"unknown model {name!r}",
                    hint=f"known models: {known} (`llamactl models`); "
                         "or hf.co/OWNER/REPO[:TAG], or a path to a .gguf file")


def get(name: str) -> CatalogEntry:
    entry = find(name)
    if entry is None:
        raise unknown(name)
    return entry


def draft_for(entry: CatalogEntry) -> CatalogEntry:
    """The catalog's draft model for `entry` (what `--draft auto` uses): a smaller model
    sharing its vocabulary. UsageError (exit 2) saying why when there is none."""
    if entry.draft:
        found = find(entry.draft)
        if found is not None:
            return found
        raise UsageError(f"the catalog pairs {entry.name} with draft {entry.draft!r}, which it does not know",
                         hint="fix the catalog entry, or give --draft MODEL")
    reason = entry.draft_note or f"the catalog knows no draft model for {entry.name}"
    raise UsageError(f"--draft auto: {reason}",
                     hint="run without --draft, or give --draft MODEL (it must share the vocabulary)")
