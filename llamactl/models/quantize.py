"""Quantizing what a user names: a .gguf file (the output beside it, or where asked) or a
registered model (the output in llamactl's models folder, registered as MODEL:TYPE).
`choose` makes that choice and checks it before any work; `run` quantizes
(llamactl.quantize) and registers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamactl import registry
from llamactl.errors import LlamactlError, UsageError
from llamactl.models.resolve import LocalModel, find, resolve


@dataclass(frozen=True)
class QuantizeTarget:
    source: LocalModel            # what is quantized
    qtype: str                    # the canonical type name ("Q4_K_M")
    output: Path                  # where the result goes
    register_as: str | None       # MODEL:type for a registered source; None for a file

    @property
    def is_file(self) -> bool:
        return self.source.entry is None


def choose(src: str, qtype: str, *, output: Path | None = None, force: bool = False,
           dry_run: bool = False, split: bool = False) -> QuantizeTarget:
    """What `quantize SRC TYPE` means, checked before any work. SRC is resolved without the
    network (a registered name or reference first, then a .gguf path). `output` and `split`
    (splitting the result into parts) apply to files only: UsageError for a model
    reference, before it is looked for. An existing output (without `force`) or an already registered MODEL:TYPE is an
    error (exit 1); a dry run checks neither."""
    from llamactl import quantize

    name = quantize.normalize_type(qtype)
    found = find(src)
    if found.is_file:
        model = resolve(found, pull=False)
        target = Path(output) if output is not None else quantize.default_output(model.path, name)
        if target.exists() and not force and not dry_run:
            raise LlamactlError(f"{target} exists", hint="pass --force to overwrite it, or -o another path")
        return QuantizeTarget(model, name, target, None)
    if output is not None:   # flags first, before asking whether the model is here
        raise UsageError("-o applies to .gguf files; a registered model's result goes to llamactl's "
                         "models folder", hint=f"quantize the file instead: `llamactl show {src}`")
    if split:
        raise UsageError("--split-max-size applies to .gguf files, not registered models",
                         hint="quantize the model's file with -o, then share the parts")
    model = resolve(found, pull=False)
    assert model.entry is not None
    base = model.entry.get("model") or model.name.split(":")[0]
    new_name = f"{base}:{name.lower()}"
    if registry.get(new_name) is not None and not dry_run:
        raise LlamactlError(f"{new_name} is already on this machine",
                            hint=f"remove it first: `llamactl rm {new_name}`")
    folder = registry.model_folder(base)
    return QuantizeTarget(model, name, folder / f"{folder.name}-{name}.gguf", new_name)


def run(target: QuantizeTarget, **options: Any) -> tuple[Any, dict[str, Any] | None]:
    """Quantize (options as for llamactl.quantize.quantize_gguf) and, for a registered
    source, register the result (license and provenance carried over; a dry run registers
    nothing). Returns (QuantizeResult, the new registry entry or None)."""
    from llamactl import paths
    from llamactl.quantize import quantize_gguf

    if not target.is_file:
        paths.ensure(target.output.parent)
    result = quantize_gguf(target.source.path, target.output, target.qtype, **options)
    if result.dry_run or target.register_as is None:
        return result, None
    entry = target.source.entry or {}
    model = target.register_as.rsplit(":", 1)[0]
    new = registry.local_entry(target.register_as, model, target.qtype.lower(), result.path,
                               license=entry.get("license"), quantized_from=entry.get("name"))
    return result, registry.put(new)
