"""`llamactl list`, `show`, `rm`: the models on this machine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llamactl.cli import output
from llamactl.cli.options import DryRunOpt, JsonOpt, ModelArg, YesOpt


def find_local(ref: str) -> dict[str, Any] | None:
    """The registry entry a name or reference means, without the network."""
    from llamactl import registry

    entry = registry.get(ref.strip())
    if entry is not None:
        return entry
    from llamactl import hub, refs

    parsed = refs.parse(ref)
    return hub.registered_for(parsed)


def _list(as_json: bool) -> None:
    from llamactl import registry
    from llamactl.fsutil import human_bytes

    entries = registry.entries()
    if as_json:
        output.json_doc(entries)
        return
    if not entries:
        output.info("no models on this machine yet; fetch one with `llamactl pull llama3.2-1b`")
        return
    output.rows(["NAME", "SIZE", "SOURCE", "LICENSE", "PULLED"],
                [[e["name"], human_bytes(e.get("size") or 0), e.get("repo") or e.get("path") or "-",
                  e.get("license") or "-", (e.get("pulled_at") or "")[:16].replace("T", " ")]
                 for e in entries])


def _show(model: str, as_json: bool) -> None:
    from llamactl import gguf_info, licenses, refs
    from llamactl.errors import NotFound

    entry = None
    if refs.looks_like_path(model.strip()) and not model.strip().startswith("hf"):
        path = Path(model).expanduser()
    else:
        entry = find_local(model)
        if entry is None:
            parsed = refs.parse(model)
            if parsed.kind == "path":
                path = parsed.path  # type: ignore[assignment]
            else:
                raise NotFound(f"{model} is not on this machine",
                               hint=f"pull it first: `llamactl pull {model}`")
        else:
            path = Path(entry["path"])
    info = gguf_info.read_gguf(path)
    doc = info.to_dict()
    family = (entry or {}).get("license") or licenses.normalize(info.license)
    doc["license_family"] = family
    doc["license_accepted"] = licenses.is_accepted(family) if family else None
    if entry is not None:
        doc["registry"] = {k: entry.get(k) for k in ("name", "repo", "revision", "tag",
                                                     "pulled_at", "size", "files")}
    if as_json:
        output.json_doc(doc)
        return
    from llamactl.fsutil import human_bytes

    def count(n: int | None) -> str:
        return "-" if n is None else f"{n:,}"

    rows = [
        ("name", (entry or {}).get("name") or info.name or path.name),
        ("architecture", info.architecture),
        ("parameters", count(info.n_params)),
        ("quant", info.file_type or "-"),
        ("context length", count(info.context_length)),
        ("layers", count(info.block_count)),
    ]
    if info.expert_count:
        rows.append(("experts", f"{info.expert_count} ({info.expert_used_count or '?'} used per token)"))
    rows += [
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("license", f"{family or info.license or '-'}"
                    + ("" if not family else (" (accepted)" if doc["license_accepted"] else " (not accepted)"))),
        ("size", human_bytes(info.file_bytes)),
    ]
    if entry is not None and entry.get("repo"):
        rows.append(("source", f"{entry['repo']}@{(entry.get('revision') or '')[:12]}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        output.data(f"{key:<{width}}  {value}")
    for i, p in enumerate(info.paths):
        output.data(f"{'files' if i == 0 else '':<{width}}  {p}")


def _rm_plan(entry: dict[str, Any]) -> tuple[list[tuple[Path, int]], list[tuple[Path, list[str]]]]:
    """(files to delete with sizes, files kept with the entries that still use them)."""
    from llamactl import paths, registry

    delete: list[tuple[Path, int]] = []
    keep: list[tuple[Path, list[str]]] = []
    models_dir = paths.models_dir().resolve()
    for f in entry.get("files", []):
        pointer = Path(f["path"])
        blob = Path(f["blob"]) if f.get("blob") else None
        users = registry.users_of(str(blob or pointer), exclude=entry["name"])
        if blob is not None:
            if users:
                keep.append((blob, users))
            elif blob.exists():
                delete.append((blob, blob.stat().st_size))
            pointer_users = registry.users_of(str(pointer), exclude=entry["name"])
            if (pointer.is_symlink() or pointer.exists()) and not pointer_users:
                delete.append((pointer, 0 if pointer.is_symlink() else pointer.stat().st_size))
        elif pointer.exists():
            try:
                inside = pointer.resolve().is_relative_to(models_dir)
            except OSError:
                inside = False
            if users:
                keep.append((pointer, users))
            elif inside:
                delete.append((pointer, pointer.stat().st_size))
            else:
                keep.append((pointer, ["not llamactl's file"]))
    return delete, keep


def _prune_cache_folders(deleted: list[Path]) -> None:
    """Remove the Hugging Face cache folders a removal left empty: snapshot folders, and a
    repository folder with no blobs (nor partial downloads) and no snapshots left."""
    from llamactl import paths

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
            import shutil

            shutil.rmtree(repo, ignore_errors=True)


def _rm(model: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    from llamactl import registry
    from llamactl.errors import NotFound, UsageError
    from llamactl.fsutil import human_bytes

    entry = find_local(model)
    if entry is None:
        raise NotFound(f"{model} is not on this machine", hint="see `llamactl list`")
    delete, keep = _rm_plan(entry)
    freed = sum(size for _, size in delete)
    plan = {"name": entry["name"], "delete": [str(p) for p, _ in delete],
            "keep": [{"path": str(p), "used_by": u} for p, u in keep], "frees_bytes": freed,
            "dry_run": dry_run}
    if not as_json:
        output.info(f"remove {entry['name']}: frees {human_bytes(freed)}")
        for p, size in delete:
            output.info(f"  delete {p}" + (f" ({human_bytes(size)})" if size else ""))
        for p, users in keep:
            output.info(f"  keep   {p} (used by {', '.join(users)})")
    if dry_run:
        if as_json:
            output.json_doc(plan)
        return
    if not yes:
        if not output.stdin_is_tty():
            raise UsageError("refusing to ask for confirmation without a terminal",
                             hint=f"pass --yes to remove {entry['name']}, or --dry-run to see the plan")
        sys.stderr.write(f"Remove {entry['name']}? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            output.info("nothing removed")
            raise SystemExit(1)
    registry.remove(entry["name"])  # first: the registry never names a deleted file
    for p, _ in delete:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            output.warn(f"could not delete {p}: {exc.strerror or exc}")
    _prune_cache_folders([p for p, _ in delete])
    if as_json:
        output.json_doc(plan)
    else:
        output.info(f"removed {entry['name']}")


def register(app: Any) -> None:
    @app.command("list", help="List the models on this machine.")
    def list_cmd(as_json: JsonOpt = False) -> None:
        _list(as_json)

    @app.command("show", help="Show a model's details, read from its GGUF header.")
    def show_cmd(model: ModelArg, as_json: JsonOpt = False) -> None:
        _show(model, as_json)

    @app.command("rm", help="Remove a model from this machine (plan, confirm, delete; Hub "
                            "cache files another model uses are kept).")
    def rm_cmd(model: ModelArg, yes: YesOpt = False, dry_run: DryRunOpt = False,
               as_json: JsonOpt = False) -> None:
        _rm(model, yes, dry_run, as_json)
