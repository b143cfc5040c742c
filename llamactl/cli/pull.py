"""`llamactl pull`: download a model (or a checkpoint to convert) and print its path."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from llamactl.cli import output
from llamactl.cli.options import AcceptLicenseOpt, JsonOpt, ModelArg, QuietOpt, RevisionOpt


def _render(entry: dict[str, Any], status: str, as_json: bool, quiet: bool) -> None:
    from llamactl.fsutil import human_bytes

    if as_json:
        output.json_doc(entry)
        return
    if not quiet:
        what = "already on this machine" if status == "present" else "pulled"
        rev = (entry.get("revision") or "")[:12]
        output.info(f"{entry['name']}: {what} ({human_bytes(entry.get('size') or 0)}, "
                    f"{entry.get('repo')}@{rev})")
        if entry.get("mmproj"):
            proj = entry["mmproj"]
            output.info(f"vision projector: {proj['filename']} ({human_bytes(proj.get('size') or 0)})")
    output.data(entry["path"])


def register(app: Any) -> None:
    @app.command("pull", help="Download a model from the Hugging Face Hub (resume, sha256 "
                              "checks, license gate). Prints the model file's path.")
    def pull_cmd(
        model: ModelArg,
        revision: RevisionOpt = None,
        accept_license: AcceptLicenseOpt = False,
        source: Annotated[str, typer.Option(
            "--from", help="gguf: a published GGUF (default); safetensors: download the "
                           "checkpoint, convert and quantize it here.")] = "gguf",
        quant: Annotated[Optional[str], typer.Option(
            "--quant", help="With --from safetensors: the quant to make (default Q4_K_M).")] = None,
        keep_intermediate: Annotated[bool, typer.Option(
            "--keep-intermediate", help="With --from safetensors: keep (and register) the "
                                        "full-precision GGUF.")] = False,
        mmproj: Annotated[Optional[str], typer.Option(
            "--mmproj", help="The vision projector to fetch with a Llama 4 GGUF: a quant (f16, bf16, "
                             "q8_0 ...) or none (default: the model's precision, else F16/BF16 "
                             "before quantized ones).")] = None,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        from llamactl.cli.fetch import pull_model

        entry, status = pull_model(model, quiet=quiet, source=source, quant=quant,
                                   revision=revision, keep_intermediate=keep_intermediate,
                                   accept_license=accept_license,
                                   projector=mmproj.lower() if mmproj else None)
        _render(entry, status, as_json, quiet)
