"""`llamactl quantize`: a GGUF (a file or a registered model) -> a quantized GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli import output
from llamactl.cli.options import DryRunOpt, JsonOpt, QuietOpt, ThreadsOpt


class Progress:
    """Tensors on stderr as llama.cpp starts them: a bar on a terminal, a line per ~10%
    otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.next_pct = 10
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, name: str, index: int, count: int) -> None:
        if self.quiet:
            return
        if output.stderr_is_tty():
            if self._bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn

                self._bar = Bar(TextColumn("quantizing"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[tensor]}"), console=output.stderr_console(),
                                transient=True)
                self._bar.start()
                self._task = self._bar.add_task("quantize", total=count, tensor="")
            self._bar.update(self._task, completed=index - 1, tensor=name)
            return
        pct = 100 * index // max(1, count)
        if pct >= self.next_pct or index == count:
            output.info(f"quantizing: tensor {index} of {count} ({name})")
            self.next_pct = (pct // 10 + 1) * 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _is_file_ref(src: str) -> bool:
    from llamactl.refs import looks_like_path

    return looks_like_path(src) or Path(src).is_file()


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
        split_max_size: Annotated[Optional[str], typer.Option(
            "--split-max-size", help="Write parts of at most this size (48G, 2000M ...) named "
                                     "NAME-00001-of-0000N.gguf, as the Hub's 50 GB file limit needs; "
                                     "llama.cpp loads them from the first part (file sources only).")] = None,
        dry_run: DryRunOpt = False,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        from llamactl import quantize
        from llamactl.errors import LlamactlError, NotFound, UsageError

        name = quantize.normalize_type(qtype)   # exit 2 before any work
        if name in quantize.NEEDS_IMATRIX and imatrix is None:
            raise UsageError(f"{name} needs an importance matrix: llama.cpp refuses it without one",
                             hint="pass --imatrix FILE (the imatrix published beside the GGUF quants), "
                                  "or choose Q4_K_M / IQ4_XS")
        if imatrix is not None and not imatrix.is_file():
            raise NotFound(f"imatrix file not found: {imatrix}")
        if out is not None and out.suffix.lower() != ".gguf":
            raise UsageError(f"the output should end in .gguf: {out}")
        split_limit = None
        if split_max_size is not None:
            from llamactl.gguf_split import parse_size

            split_limit = parse_size(split_max_size)   # exit 2 before any work
            if not _is_file_ref(src):
                raise UsageError("--split-max-size applies to .gguf files, not registered models",
                                 hint="quantize the model's file with -o, then share the parts")
        progress = Progress(quiet or as_json)
        options = dict(imatrix=imatrix, allow_requantize=allow_requantize, threads=threads,
                       leave_output_tensor=leave_output_tensor, pure=pure, dry_run=dry_run,
                       progress=progress)
        entry = None
        try:
            if _is_file_ref(src):
                path = Path(src).expanduser()
                if not path.is_file():
                    raise NotFound(f"no such file: {path}")
                target = out or quantize.default_output(path, name)
                if target.exists() and not force and not dry_run:
                    raise LlamactlError(f"{target} exists", hint="pass --force to overwrite it, or -o another path")
                if not quiet and not as_json:
                    output.info(f"quantizing {path.name} to {name} ...")
                result = quantize.quantize_gguf(path, target, name, **options)
            else:
                if out is not None:
                    raise UsageError("-o applies to .gguf files; a registered model's result goes to llamactl's "
                                     "models folder", hint=f"quantize the file instead: `llamactl show {src}`")
                if not quiet and not as_json:
                    output.info(f"quantizing {src} to {name} ...")
                result, entry = quantize.quantize_registered(src, name, **options)
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
