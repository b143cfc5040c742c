"""safetensors checkpoints -> GGUF, one module per architecture family.

`convert_checkpoint` reads config.json, picks the converter for its `model_type`, and
writes the GGUF atomically. Architecture modules expose
`convert(ckpt, out_path, outtype, progress, **options) -> dict` and build on
llamactl.convert.common. A model_type not in ARCHITECTURES is refused (exit 1, naming what
is supported)."""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import LlamactlError

# config.json model_type -> (module in llamactl.convert, description)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "Llama 3.x (3.0, 3.1, 3.2, 3.3)"),
    "llama4": ("llama4", "Llama 4 (Scout, Maverick)"),
    "llama4_text": ("llama4", "Llama 4 text-only (Llama4ForCausalLM)"),
}


@dataclass
class ConvertResult:
    path: Path
    architecture: str            # the GGUF architecture written ("llama" ...)
    model_type: str              # config.json's model_type
    outtype: str                 # "f32" | "f16" | "bf16"
    source_dtype: str            # "F32" | "F16" | "BF16"
    n_tensors: int
    n_params: int
    bytes: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _unsupported(model_type: str) -> LlamactlError:
    supported = ", ".join(f"{m} ({desc})" for m, (_, desc) in ARCHITECTURES.items())
    what = f"model_type {model_type!r}" if model_type else "a config.json without model_type"
    return LlamactlError(f"cannot convert {what}: supported architectures are {supported}",
                         hint="convert a checkpoint of a supported architecture, or pull a ready GGUF")


def resolve_output(src_dir: Path, out_path: Path | None, outtype: str | None) -> Path:
    """The output path: `out_path`, or FOLDER-OUTTYPE.gguf in the current folder (the
    default output type read from the checkpoint's shard headers)."""
    if out_path is not None:
        return Path(out_path)
    from llamactl.convert import common

    src_dir = Path(src_dir)
    config = common.read_config(src_dir)
    model_type = str(config.get("model_type", ""))
    if model_type not in ARCHITECTURES:
        raise _unsupported(model_type)
    chosen = outtype.lower() if outtype else common.default_outtype(common.open_checkpoint(src_dir, config))
    name = src_dir.resolve().name or "model"
    return Path.cwd() / f"{name}-{chosen}.gguf"


def projector_output(src_dir: Path, out_path: Path, mmproj: Path | None = None,
                     enabled: bool = True) -> Path | None:
    """Where a multimodal checkpoint's vision projector goes: `mmproj` when given, else
    mmproj-NAME.gguf beside the output NAME.gguf; None when the checkpoint has no vision
    tower (an explicit `mmproj` then is an error) or `enabled` is False."""
    from llamactl.convert import common, llama4_vision

    src_dir = Path(src_dir)
    config = common.read_config(src_dir)
    if not enabled:
        if mmproj is not None:
            from llamactl.errors import UsageError

            raise UsageError("--mmproj and --no-mmproj contradict each other")
        return None
    if config.get("model_type") != "llama4" or not isinstance(config.get("vision_config"), dict):
        if mmproj is not None:
            raise LlamactlError(f"{src_dir} has no vision tower: there is no projector to write",
                                hint="leave out --mmproj")
        return None
    target = Path(mmproj) if mmproj is not None else llama4_vision.default_path(out_path)
    if target.resolve() == Path(out_path).resolve():
        from llamactl.errors import UsageError

        raise UsageError(f"the projector and the model would both be written to {target}")
    return target


def convert_checkpoint(src_dir: Path, out_path: Path, outtype: str | None = None,
                       progress: Callable[[str, int, int], None] | None = None,
                       **options: Any) -> ConvertResult:
    """Convert the Hugging Face checkpoint in `src_dir` to a GGUF at `out_path`.

    `outtype`: "f32", "f16" or "bf16" (default: bf16 for a bf16 source, else f16).
    `progress(tensor_name, bytes_done, bytes_total)` is called after each tensor.
    `options` go to the architecture's converter (`name=` sets general.name; for Llama 4,
    `mmproj=PATH` also writes the vision projector, see `projector_output`).
    Everything is checked (config, shard headers and sizes, tensor shapes, tokenizer)
    before the output is opened; the output is written to a temporary file and renamed on
    success, so a failure or Ctrl-C leaves nothing at `out_path`; the temporary files of
    conversions killed outright in that folder are deleted first."""
    from llamactl.convert import common
    from llamactl.fsutil import remove_stale_partials

    src_dir = Path(src_dir)
    out_path = Path(out_path)
    config = common.read_config(src_dir)
    model_type = str(config.get("model_type", ""))
    if model_type not in ARCHITECTURES:
        raise _unsupported(model_type)
    if out_path.exists() and out_path.is_dir():
        raise LlamactlError(f"output path is a folder: {out_path}", hint="pass a file name ending in .gguf")
    module = importlib.import_module(f"llamactl.convert.{ARCHITECTURES[model_type][0]}")
    ckpt = common.open_checkpoint(src_dir, config)
    chosen = common.check_outtype(outtype, ckpt)
    remove_stale_partials(out_path.parent)   # what conversions killed outright left there
    start = time.monotonic()
    info = module.convert(ckpt, out_path, chosen, progress, **options)
    return ConvertResult(
        path=out_path,
        architecture=info.pop("architecture"),
        model_type=model_type,
        outtype=chosen,
        source_dtype=ckpt.source_dtype(),
        n_tensors=info.pop("n_tensors"),
        n_params=info.pop("n_params"),
        bytes=info.pop("bytes"),
        seconds=time.monotonic() - start,
        details=info,
    )
