"""`llamactl convert`: a safetensors checkpoint folder -> GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli import output
from llamactl.cli.options import JsonOpt, QuietOpt

OUTTYPES = ("f32", "f16", "bf16")


def register(app: Any) -> None:
    @app.command(
        "convert",
        help="Convert a Hugging Face safetensors checkpoint folder (Llama 3.x, Llama 4) to GGUF. "
             "Prints the output path. Quantize it afterwards with `llamactl quantize`.",
    )
    def convert_cmd(
        src: Annotated[Path, typer.Argument(help="Checkpoint folder: config.json, *.safetensors, "
                                                 "tokenizer.json, tokenizer_config.json.",
                                            show_default=False)],
        out: Annotated[Optional[Path], typer.Option(
            "--output", "-o", help="Output .gguf file (default: FOLDER-OUTTYPE.gguf in the current folder).")] = None,
        outtype: Annotated[Optional[str], typer.Option(
            "--outtype", help="f32, f16 or bf16 (default: bf16 for a bf16 checkpoint, else f16).")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="general.name written in the GGUF.")] = None,
        mmproj: Annotated[Optional[Path], typer.Option(
            "--mmproj", help="Llama 4 with a vision tower: write its projector GGUF here "
                             "(default: mmproj-NAME.gguf beside the output).")] = None,
        no_mmproj: Annotated[bool, typer.Option(
            "--no-mmproj", help="Convert the text model only, without the vision projector.")] = False,
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        from llamactl.errors import LlamactlError, UsageError

        if outtype is not None and outtype.lower() not in OUTTYPES:
            raise UsageError(f"unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}",
                             hint="quantized types come from `llamactl quantize` after converting")
        if out is not None and out.suffix.lower() != ".gguf":
            raise UsageError(f"the output should end in .gguf: {out}")
        if mmproj is not None and mmproj.suffix.lower() != ".gguf":
            raise UsageError(f"the projector output should end in .gguf: {mmproj}")
        from llamactl.convert import convert_checkpoint, projector_output, resolve_output

        target = resolve_output(src, out, outtype)
        if target.exists() and not force:
            raise LlamactlError(f"{target} exists", hint="pass --force to overwrite it, or -o another path")
        projector = projector_output(src, target, mmproj, enabled=not no_mmproj)
        if projector is not None and projector.exists() and not force:
            raise LlamactlError(f"{projector} exists",
                                hint="pass --force to overwrite it, --mmproj another path, or --no-mmproj")
        options: dict[str, Any] = {"name": name} if name else {}
        if projector is not None:
            options.update(mmproj=projector, mmproj_optional=mmproj is None)
        from llamactl.cli.progress import TensorProgress

        progress = TensorProgress("converting", quiet or as_json, in_bytes=True)
        try:
            result = convert_checkpoint(src, target, outtype=outtype, progress=progress, **options)
        finally:
            progress.close()
        if not quiet:
            for line in result.details.get("notes", []):   # e.g. Llama 4's vision tower left out
                output.info(line)
        if as_json:
            output.json_doc(result.to_dict())
            return
        if not quiet:
            from llamactl.fsutil import human_bytes

            output.info(f"converted {src} ({result.model_type}, {result.source_dtype}) to {result.outtype}: "
                        f"{result.n_tensors} tensors, {result.n_params:,} parameters, "
                        f"{human_bytes(result.bytes)} in {result.seconds:.1f} s")
            output.hint(f"quantize it: `llamactl quantize {result.path} Q4_K_M`")
        output.data(str(result.path))
