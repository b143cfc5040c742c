"""`llamactl pull`, and `ensure_model_file` (docs/CONTRACTS.md): the one way every verb
turns a model reference into a GGUF path, pulling it first when needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llamactl.cli import output
from llamactl.cli.options import AcceptLicenseOpt, JsonOpt, ModelArg, QuietOpt, RevisionOpt


def _interactive() -> bool:
    return output.stdin_is_tty() and output.stderr_is_tty()


_active: list[Any] = []  # the progress display of the pull in hand (stopped for a prompt)


def _confirm_license(family: str, plan: Any) -> str | bool:
    from llamactl import hub
    from llamactl.cli.license import prompt_accept

    for progress in _active:
        if hasattr(progress, "close"):
            progress.close()
    texts = hub.fetch_license_texts(plan.listing) if plan.listing is not None else []
    return prompt_accept(family, texts, plan.name)


class _PlainProgress:
    """One short line per file on stderr (not a terminal)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.done = 0

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        from llamactl.fsutil import human_bytes

        self.start, self.done = time.monotonic(), 0
        size = human_bytes(total) if total is not None else "unknown size"
        verb = {"download": "downloading", "resume": "resuming", "verify": "verifying"}[action]
        extra = f" from {human_bytes(done)}" if action == "resume" else ""
        output.info(f"{verb} {filename} ({size}){extra}")

    def advance(self, n: int) -> None:
        self.done += n

    def file_end(self, filename: str, status: str) -> None:
        output.info(f"{filename}: {status}, sha256 ok")

    def waiting(self, what: str) -> None:
        output.info(f"waiting for another pull of {what} to finish")


class _RichProgress(_PlainProgress):
    """A rich progress bar per file on stderr (a terminal). Started at the first file, and
    stopped while a prompt is on screen."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: Any = None
        self.task: Any = None

    def _live(self) -> Any:
        if self.progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=output.stderr_console(), transient=False)
            self.progress.start()
        return self.progress

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        label = {"download": "", "resume": "(resume) ", "verify": "(verify) "}[action]
        name = filename.rsplit("/", 1)[-1]
        self.task = self._live().add_task(f"{label}{name}", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None and self.progress is not None:
            self.progress.advance(self.task, n)

    def file_end(self, filename: str, status: str) -> None:
        if self.task is not None and self.progress is not None:
            total = self.progress.tasks[-1].total
            if total:
                self.progress.update(self.task, completed=total)
        self.task = None

    def waiting(self, what: str) -> None:
        output.info(f"waiting for another pull of {what} to finish")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _Silent:
    def file_start(self, *a: Any) -> None: ...
    def advance(self, n: int) -> None: ...
    def file_end(self, *a: Any) -> None: ...
    def waiting(self, what: str) -> None: ...


def _progress(quiet: bool) -> Any:
    if quiet:
        return _Silent()
    if output.stderr_is_tty():
        return _RichProgress()
    return _PlainProgress()


def pull(ref_text: str, *, revision: str | None = None, accept_license: bool = False,
         quiet: bool = False, source: str = "gguf", quant: str | None = None,
         keep_intermediate: bool = False) -> tuple[dict[str, Any], str]:
    """Pull a reference (catalog or Hub) with progress and the license gate. With
    source="safetensors": download the checkpoint, convert, quantize to `quant`."""
    from llamactl import hub, refs
    from llamactl.errors import UsageError

    source = source.lower()
    if source not in ("gguf", "safetensors"):
        raise UsageError(f"unknown --from {source!r}; choose gguf or safetensors")
    if source == "gguf" and (quant is not None or keep_intermediate):
        raise UsageError("--quant and --keep-intermediate go with --from safetensors",
                         hint="for a GGUF, name the quant as a tag: MODEL:q8_0")
    ref = refs.parse(ref_text)
    if ref.kind == "path":
        raise UsageError(f"{ref_text} is a local file; there is nothing to pull",
                         hint="use it directly (chat, show, bench accept a .gguf path)")
    if source == "safetensors":
        if ref.kind == "hf" and ref.filename:
            raise UsageError("--from safetensors takes a catalog name or hf.co/OWNER/REPO, not a file")
        if ref.tag and quant and ref.tag.lower() != quant.lower():
            raise UsageError(f"two quants asked for: the tag {ref.tag!r} and --quant {quant!r}")
        quant = quant or ref.tag or "Q4_K_M"
        from llamactl.quantize import normalize_type

        normalize_type(quant)  # a bad type fails before any download
    progress = _progress(quiet)
    _active.append(progress)
    try:
        confirm = _confirm_license if _interactive() else None
        if source == "safetensors":
            from llamactl.cli.convert import Progress as ConvertProgress

            convert_progress = ConvertProgress(quiet)

            def step(message: str) -> None:
                if hasattr(progress, "close"):
                    progress.close()
                if not quiet:
                    output.info(message)

            try:
                return hub.pull_safetensors(ref, quant=quant or "Q4_K_M", revision=revision,
                                            accept_license=accept_license, confirm=confirm,
                                            progress=progress, convert_progress=convert_progress,
                                            on_step=step, keep_intermediate=keep_intermediate)
            finally:
                convert_progress.close()
        return hub.pull_model(ref, revision=revision, accept_license=accept_license,
                              confirm=confirm, progress=progress)
    finally:
        _active.remove(progress)
        if hasattr(progress, "close"):
            progress.close()


def ensure_model_file(ref: str, *, accept_license: bool = False, quiet: bool = False) -> Path:
    """The path of the (first part of the) GGUF a reference names: a .gguf path as is, a
    registered model's file, or a catalog/Hub model pulled first (progress on stderr, the
    license gate: a prompt on a terminal, LicenseNotAccepted (exit 3) without one)."""
    from llamactl import hub, refs, registry
    from llamactl.errors import NotFound

    entry = registry.get(ref.strip())
    if entry is not None:
        path = Path(entry["path"])
        if not path.exists():
            raise NotFound(f"the file of {entry['name']} is gone: {path}",
                           hint=f"pull it again, or remove it: `llamactl rm {entry['name']}`")
        return path
    parsed = refs.parse(ref)
    if parsed.kind == "path":
        assert parsed.path is not None
        if not parsed.path.is_file():
            raise NotFound(f"no such file: {parsed.path}")
        return parsed.path
    existing = hub.registered_for(parsed)
    if existing is not None and hub.files_present(existing):
        return Path(existing["path"])
    entry, _ = pull(ref, accept_license=accept_license, quiet=quiet)
    return Path(entry["path"])


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
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        entry, status = pull(model, revision=revision, accept_license=accept_license, quiet=quiet,
                             source=source, quant=quant, keep_intermediate=keep_intermediate)
        _render(entry, status, as_json, quiet)

