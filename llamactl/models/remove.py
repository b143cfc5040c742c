"""Removing a model: a plan (what goes, what stays because another model uses it, the bytes
freed) that the CLI shows, confirms and executes. Hugging Face cache files another
registered model uses are kept; files outside llamactl's models folder that no Hub pull
put there (a loose .gguf registered in place) are never deleted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamactl import paths, registry


@dataclass
class Kept:
    path: Path
    used_by: list[str]            # registry names, or a reason ("not llamactl's file")


@dataclass
class RemovalPlan:
    name: str                                   # the registry name that goes
    delete: list[tuple[Path, int]] = field(default_factory=list)   # (path, bytes freed)
    keep: list[Kept] = field(default_factory=list)

    @property
    def frees_bytes(self) -> int:
        return sum(size for _, size in self.delete)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "delete": [str(p) for p, _ in self.delete],
                "keep": [{"path": str(k.path), "used_by": k.used_by} for k in self.keep],
                "frees_bytes": self.frees_bytes}

    def execute(self) -> list[tuple[Path, OSError]]:
        """Unregister the model first (the registry never names a deleted file), delete its
        files, prune the Hugging Face cache folders left empty. Returns the files that could
        not be deleted, with why (they are no longer registered)."""
        from llamactl.hub.cache import prune_empty_folders

        registry.remove(self.name)
        failed = []
        for path, _ in self.delete:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append((path, exc))
        prune_empty_folders([p for p, _ in self.delete])
        return failed


def plan_removal(ref: str) -> RemovalPlan:
    """The removal plan for a registered model (named as any verb takes it; no network).
    NotFound (exit 4) when it is not registered."""
    from llamactl.errors import NotFound
    from llamactl.models.resolve import find

    models = registry.read()
    entry = find(ref, models).entry
    if entry is None:
        raise NotFound(f"{ref} is not on this machine", hint="see `llamactl list`")
    plan = RemovalPlan(entry["name"])
    models_dir = paths.models_dir().resolve()

    def users(path: Path) -> list[str]:
        return registry.users_of(str(path), exclude=entry["name"], models=models)

    for f in registry.all_files(entry):       # the projector's file too
        pointer = Path(f["path"])
        blob = Path(f["blob"]) if f.get("blob") else None
        if blob is not None:
            blob_users = users(blob)
            if blob_users:
                plan.keep.append(Kept(blob, blob_users))
            elif blob.exists():
                plan.delete.append((blob, blob.stat().st_size))
            if (pointer.is_symlink() or pointer.exists()) and not users(pointer):
                plan.delete.append((pointer, 0 if pointer.is_symlink() else pointer.stat().st_size))
        elif pointer.exists():
            try:
                inside = pointer.resolve().is_relative_to(models_dir)
            except OSError:
                inside = False
            pointer_users = users(pointer)
            if pointer_users:
                plan.keep.append(Kept(pointer, pointer_users))
            elif inside:
                plan.delete.append((pointer, pointer.stat().st_size))
            else:
                plan.keep.append(Kept(pointer, ["not llamactl's file"]))
    return plan
