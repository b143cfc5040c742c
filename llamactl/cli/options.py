"""Shared options, declared once as Annotated aliases."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llamactl.load import KV_TYPES_TEXT, SIZE_HELP

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
# --- the load specification (llamactl.load): chat, bench, plan and serve declare these ---
# Help texts come from llamactl.load's tables, so every verb lists the same choices.

GPU_LAYERS_HELP = "Layers to offload to the GPU: a number, -1 for all, or 'auto' (the memory plan)."
KV_TYPE_HELP = (f"KV cache type: {KV_TYPES_TEXT}. Quantized types (q8_0, q4_0 ...) need --flash-attn.")
CTX_HELP = ("Context size in tokens, or 'max': the largest that fits (default: the model's, "
            "capped by the plan).")
CPU_MOE_HELP = "Keep the MoE experts of the first N layers in CPU memory."
FLASH_ATTN_HELP = ("Flash attention: on, off or auto (on when it frees real memory at this "
                   "context, and for a quantized --kv-type). --flash-attn alone means on.")
KV_CACHE_HELP = ("Llama 4's KV cache: full (exact prefix reuse), chunked (its chunked-attention "
                 "layers keep an 8192-token window: about a quarter of the memory at long "
                 "contexts) or auto (full when it fits as well, else chunked).")
THREADS_HELP = "CPU threads (default: llama.cpp's choice)."
BATCH_HELP = "Logical batch size (tokens evaluated per call)."
UBATCH_HELP = "Physical (micro) batch size; at most --batch-size."

ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help=THREADS_HELP, min=1)]
GpuLayersOpt = Annotated[str, typer.Option("--gpu-layers", "-ngl", help=GPU_LAYERS_HELP)]
CtxOpt = Annotated[Optional[str], typer.Option("--ctx", "-c", help=CTX_HELP, metavar="N|max")]
CpuMoeOpt = Annotated[Optional[int], typer.Option("--cpu-moe", help=CPU_MOE_HELP, min=0)]
KvTypeOpt = Annotated[str, typer.Option("--kv-type", help=KV_TYPE_HELP)]
FlashAttnOpt = Annotated[str, typer.Option("--flash-attn", "-fa", help=FLASH_ATTN_HELP,
                                           metavar="on|off|auto")]
KvCacheOpt = Annotated[str, typer.Option("--kv-cache", help=KV_CACHE_HELP, metavar="full|chunked|auto")]

FLASH_ATTN_FLAGS = ("--flash-attn", "-fa")
FLASH_ATTN_VALUES = {"on", "off", "auto", "1", "0", "true", "false", "yes", "no"}


def flag_forms(args: list[str]) -> list[str]:
    """`--flash-attn` (or `-fa`) given as a bare switch, as before it took a value, means
    `--flash-attn=on`: the switch is followed by nothing, by another option, or (except for
    bench, whose --flash-attn takes a list such as "0,1") by a word that is not a value,
    such as a chat prompt."""
    out: list[str] = []
    bench = bool(args) and args[0] == "bench"
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in FLASH_ATTN_FLAGS:
            nxt = args[i + 1] if i + 1 < len(args) else None
            bare = nxt is None or nxt.startswith("-") or (
                not bench and nxt.strip().lower() not in FLASH_ATTN_VALUES)
            if bare:
                out.append(f"{arg}=on")
                continue
        out.append(arg)
    return out
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help=BATCH_HELP, min=1)]
UbatchOpt = Annotated[int, typer.Option("--ubatch-size", "-ub", help=UBATCH_HELP, min=1)]

# bench sweeps the same options: comma-separated lists, each value read as above
GpuLayersListOpt = Annotated[str, typer.Option(
    "--gpu-layers", "-ngl", help="Layers on the GPU: numbers (-1: all) or 'auto' (the memory plan), comma-separated.")]
ThreadsListOpt = Annotated[Optional[str], typer.Option(
    "--threads", "-t", help="CPU threads, comma-separated (default: llama.cpp's choice).", show_default=False)]
BatchListOpt = Annotated[str, typer.Option("--batch-size", "-b", help="Logical batch sizes, comma-separated.")]
UbatchListOpt = Annotated[str, typer.Option("--ubatch-size", "-ub", help="Physical batch sizes, comma-separated.")]
CtxListOpt = Annotated[Optional[str], typer.Option(
    "--ctx", "-c", help="Context sizes, comma-separated (default: sized to the largest test).", show_default=False)]
KvTypeListOpt = Annotated[str, typer.Option(
    "--kv-type", help=f"KV cache types ({KV_TYPES_TEXT}), comma-separated; quantized types need --flash-attn 1.")]
FlashAttnListOpt = Annotated[str, typer.Option("--flash-attn", "-fa", help="Flash attention 0/1, comma-separated.")]

# sizes: one convention (llamactl.load.parse_size)
VramOpt = Annotated[Optional[str], typer.Option(
    "--vram", help=f"GPU memory to plan for, replacing detection (80GiB, 24GB, 0 for none; {SIZE_HELP}).")]
RamOpt = Annotated[Optional[str], typer.Option(
    "--ram", help=f"System RAM to plan for, replacing detection (256GiB, 64GB; {SIZE_HELP}).")]
SplitMaxSizeOpt = Annotated[Optional[str], typer.Option(
    "--split-max-size", help=f"Write parts of at most this size (48G, 2000M ...; {SIZE_HELP}) named "
    "NAME-00001-of-0000N.gguf, as the Hub's 50 GB file limit needs; llama.cpp loads them from the "
    "first part (file sources only).")]

# --- speculative decoding (llamactl.draft, llamactl.engine.speculate): chat and bench ---
DraftOpt = Annotated[Optional[str], typer.Option(
    "--draft", help="A draft model for speculative decoding (same vocabulary as the model): any model "
    "reference, or 'auto' for the catalog's pair (llama3.2-1b for Llama 3.3 70B and 3.2 3B).",
    show_default=False)]
DraftMaxOpt = Annotated[Optional[int], typer.Option(
    "--draft-max", help="Tokens the draft proposes per step, fixed (default: adaptive, from 8, "
    "within 2-16 by the recent acceptance).", min=1, max=64, show_default=False)]

VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log on stderr.")]
