"""`llamactl quantize`: a GGUF (a file or a registered model) -> a quantized GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli import output
from llamactl.cli.options import DryRunOpt, JsonOpt, QuietOpt, SplitMaxSizeOpt, ThreadsOpt


def register(app: Any) -> None:
    @app.command(
        "quantize",
        help="Quantize a GGUF with llama.cpp. SRC is a .gguf file (output beside it, or -o) or a "
             "registered model (the result is registered as MODEL:TYPE). TYPE: Q8_0, Q6_K, Q5_K_M, "
             "Q5_K_S, Q4_K_M, Q4_K_S, Q4_0, Q3_K_M, Q2_K, IQ4_XS, IQ4_NL, BF16, F16 ... "
             "(case-insensitive; IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS and Q2_K_S need --imatrix). Prints the output path.",
    )
    def quantize_cmd(
        src: Annotated[str, typer.Argument(help="A .gguf file (first part of a split model) or a registered model.",
                                           show_default=False)],
        qtype: Annotated[str, typer.Argument(metavar="TYPE", help="Quantization type, e.g. Q4_K_M.",
                                             show_default=False)],
        out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf file (file sources only).")] = None,
        imatrix: Annotated[Optional[Path], typer.Option(
            "--imatrix", help="Importance matrix (GGUF or legacy .dat) to guide quantization.")] = None,
        allow_requantize: Annotated[bool, typer.Option(
            "--allow-requantize", help="Quantize an already-quantized GGUF (loses more quality).")] = False,
        threads: ThreadsOpt = None,
        leave_output_tensor: Annotated[bool, typer.Option(
            "--leave-output-tensor", help="Keep output.weight unquantized (larger, a little better).")] = False,
        pure: Annotated[bool, typer.Option("--pure", help="Every tensor in TYPE: no K-quant mixture.")] = False,
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
        split_max_size: SplitMaxSizeOpt = None,
        dry_run: DryRunOpt = False,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        from llamactl import quantize
        from llamactl.cli.progress import TensorProgress
        from llamactl.errors import UsageError
        from llamactl.models import quantize as models_quantize

        name = quantize.check_type(qtype, imatrix)   # exit 2 (or 4) before any work
        if out is not None and out.suffix.lower() != ".gguf":
            raise UsageError(f"the output should end in .gguf: {out}")
        split_limit = None
        if split_max_size is not None:
            from llamactl.gguf_split import parse_size

            split_limit = parse_size(split_max_size)   # exit 2 before any work
        target = models_quantize.choose(src, name, output=out, force=force, dry_run=dry_run,
                                        split=split_limit is not None)
        progress = TensorProgress("quantizing", quiet or as_json, in_bytes=False)
        if not quiet and not as_json:
            output.info(f"quantizing {target.source.path.name if target.is_file else src} to {name} ...")
        try:
            result, entry = models_quantize.run(
                target, imatrix=imatrix, allow_requantize=allow_requantize, threads=threads,
                leave_output_tensor=leave_output_tensor, pure=pure, dry_run=dry_run,
                progress=progress)
        finally:
            progress.close()

        from llamactl.fsutil import human_bytes

        parts = None
        if split_limit is not None and not result.dry_run and result.path is not None:
            from llamactl.gguf_split import split_in_place

            parts = split_in_place(result.path, split_limit)
            result.path = parts[0]
            if not quiet and not as_json and len(parts) > 1:
                output.info(f"split into {len(parts)} parts of at most {human_bytes(split_limit)}: "
                            f"{parts[0].name} ... {parts[-1].name}")
        if as_json:
            doc = result.to_dict()
            if parts is not None:
                doc["parts"] = [str(p) for p in parts]
            if entry is not None:
                doc["registered"] = entry["name"]
            output.json_doc(doc)
            return
        if result.dry_run:
            if not quiet:
                output.info(f"dry run: {name} would write about {human_bytes(result.bytes)} of tensors "
                            f"({result.bits_per_weight:.2f} bits per weight); nothing written")
            output.data(str(result.bytes))
            return
        if not quiet:
            note = f", registered as {entry['name']}" if entry else ""
            output.info(f"{name}: {human_bytes(result.source_bytes)} -> {human_bytes(result.bytes)} "
                        f"({result.bits_per_weight:.2f} bits per weight) in {result.seconds:.1f} s{note}")
        output.data(str(result.path))
