"""`llamactl list`, `show`, `rm`: the models on this machine."""

from __future__ import annotations

import sys
from typing import Any

from llamactl.cli import output
from llamactl.cli.options import DryRunOpt, JsonOpt, ModelArg, YesOpt


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
    from llamactl import gguf_info, licenses
    from llamactl.models.resolve import resolve

    local = resolve(model, pull=False)
    entry, path = local.entry, local.path
    info = gguf_info.read_gguf(path)
    doc = info.to_dict()
    family = (entry or {}).get("license") or licenses.normalize(info.license)
    doc["license_family"] = family
    doc["license_accepted"] = licenses.is_accepted(family) if family else None
    if entry is not None:
        doc["registry"] = {k: entry.get(k) for k in ("name", "repo", "revision", "tag",
                                                     "pulled_at", "size", "files", "mmproj")}
    projector = _projector_of(path, entry)
    doc["mmproj"] = projector
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
    if projector is not None:
        rows.append(("vision projector", projector["path"] if "error" in projector else
                     f"{projector['path']} ({human_bytes(projector['size'])}, {projector['tile']}-pixel tiles, "
                     f"{projector['tokens_per_tile']} tokens a tile, up to {projector['max_tiles']} tiles)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        output.data(f"{key:<{width}}  {value}")
    for i, p in enumerate(info.paths):
        output.data(f"{'files' if i == 0 else '':<{width}}  {p}")


def _projector_of(path, entry) -> dict | None:
    """The model's vision projector as `show` lists it (None: it has none)."""
    from llamactl.errors import LlamactlError
    from llamactl.images import find_projector

    try:
        found = find_projector(path, entry)
    except LlamactlError as exc:
        return {"path": exc.message, "error": exc.message}
    if found is None:
        return None
    from llamactl.engine.images import ProjectorInfo

    try:
        info = ProjectorInfo.read(found)
    except LlamactlError as exc:
        return {"path": str(found), "error": exc.message}
    return {"path": str(found), "size": found.stat().st_size, "tile": info.tile,
            "tokens_per_tile": info.tokens_per_tile, "max_tiles": info.max_tiles,
            "n_params": info.n_params}


def _rm(model: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    from llamactl.errors import UsageError
    from llamactl.fsutil import human_bytes
    from llamactl.models.remove import plan_removal

    plan = plan_removal(model)
    doc = {**plan.to_dict(), "dry_run": dry_run}
    if not as_json:
        output.info(f"remove {plan.name}: frees {human_bytes(plan.frees_bytes)}")
        for p, size in plan.delete:
            output.info(f"  delete {p}" + (f" ({human_bytes(size)})" if size else ""))
        for kept in plan.keep:
            output.info(f"  keep   {kept.path} (used by {', '.join(kept.used_by)})")
    if dry_run:
        if as_json:
            output.json_doc(doc)
        return
    if not yes:
        if not output.stdin_is_tty():
            raise UsageError("refusing to ask for confirmation without a terminal",
                             hint=f"pass --yes to remove {plan.name}, or --dry-run to see the plan")
        sys.stderr.write(f"Remove {plan.name}? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            output.info("nothing removed")
            raise SystemExit(1)
    for path, exc in plan.execute():
        output.warn(f"could not delete {path}: {exc.strerror or exc}")
    if as_json:
        output.json_doc(doc)
    else:
        output.info(f"removed {plan.name}")


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
