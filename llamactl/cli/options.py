"""Shared options, declared once as Annotated aliases."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model: a catalog name[:tag] (llama3.2-1b:q8_0), hf.co/OWNER/REPO[:TAG], "
        "hf://OWNER/REPO[/PATH] or a path to a .gguf file.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Hub revision: branch, tag or commit.")
]
AcceptLicenseOpt = Annotated[
    bool,
    typer.Option(
        "--accept-license",
        help="Accept the model's Llama license (recorded, as with `llamactl license accept`).",
    ),
]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: llama.cpp's choice).", min=1)
]
GpuLayersOpt = Annotated[
    str,
    typer.Option(
        "--gpu-layers",
        "-ngl",
        help="Layers to offload to the GPU: a number, or 'auto' (the memory plan).",
    ),
]
CtxOpt = Annotated[
    Optional[int],
    typer.Option("--ctx", "-c", help="Context size in tokens (default: the model's, capped by the plan).", min=1),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log on stderr.")]
