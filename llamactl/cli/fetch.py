"""The CLI's side of getting a model onto this machine, for every verb that takes a model:
progress on stderr, and the license prompt on a terminal (without one, the gate's
LicenseNotAccepted, exit 3). What a reference means is llamactl.models' decision."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from llamactl.cli import output

if TYPE_CHECKING:
    from llamactl.cli.progress import PlainPull
    from llamactl.models.pull import Confirm, Pulled, PullPlan
    from llamactl.models.resolve import LocalModel


def summary_text(family_id: str) -> str:
    from llamactl import licenses

    family = licenses.get_family(family_id)
    lines = [f"{family.title} — in short (llamactl's reading; the license itself is what binds):"]
    lines += [f"  • {point}" for point in family.summary()]
    return "\n".join(lines)


def _page(text: str) -> None:
    """Show a long text in the pager when stdout is a terminal; else on stderr."""
    if output.stdout_is_tty():
        import pydoc

        pydoc.pager(text)
    else:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()


def prompt_accept(family_id: str, texts: list[tuple[str, str]], model: str) -> str | bool:
    """Show the summary (and the license text in a pager), ask for `yes`. Returns the
    sha256 of the text shown (True when none was shown), or False."""
    output.info(f"{model} comes under a Llama license that has not been accepted on this machine.")
    output.info(summary_text(family_id))
    digest: str | bool = True
    if texts:
        joined = "\n\n".join(f"==> {name} <==\n{text}" for name, text in texts)
        import hashlib

        digest = hashlib.sha256(joined.encode("utf-8")).hexdigest()
        output.info(f"The license text from the repository follows ({', '.join(n for n, _ in texts)}).")
        _page(joined)
    sys.stderr.write("Type 'yes' to accept it and continue, anything else to stop: ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() == "yes":
        return digest
    return False


def _confirm(display: "PlainPull") -> "Confirm | None":
    """The license prompt, when stdin and stderr are a terminal (the display stops first)."""
    if not (output.stdin_is_tty() and output.stderr_is_tty()):
        return None

    def confirm(family: str, plan: "PullPlan") -> str | bool:
        from llamactl.hub.listing import fetch_license_texts

        display.close()
        texts = fetch_license_texts(plan.listing) if plan.listing is not None else []
        return prompt_accept(family, texts, plan.name)

    return confirm


def resolve_model(ref: str, *, accept_license: bool = False, quiet: bool = False) -> "LocalModel":
    """models.resolve for a verb: a registered model or a .gguf file as is, anything else
    pulled first with progress on stderr (none when `quiet`) and the license gate."""
    from llamactl.cli.progress import pull_display
    from llamactl.models.resolve import resolve

    display = pull_display(quiet)
    try:
        return resolve(ref, accept_license=accept_license, confirm=_confirm(display),
                       progress=display)
    finally:
        display.close()


def resolve_draft(model_ref: str, draft_ref: str, *, accept_license: bool = False,
                  quiet: bool = False) -> tuple[str, "LocalModel"]:
    """--draft: the reference (`auto`: the catalog's pair of `model_ref`, llamactl.draft)
    and the local model, resolved (and pulled, license gate included) as the model is."""
    from llamactl.draft import resolve_reference

    ref = resolve_reference(model_ref, draft_ref)
    return ref, resolve_model(ref, accept_license=accept_license, quiet=quiet)


def pull_model(ref: str, *, quiet: bool = False, **options: Any) -> "Pulled":
    """models.pull.pull (`options`: source, quant, revision, keep_intermediate,
    accept_license) with progress on stderr and the license prompt on a terminal."""
    from llamactl.cli.progress import pull_display
    from llamactl.models.pull import pull

    display = pull_display(quiet)
    try:
        return pull(ref, confirm=_confirm(display), progress=display, **options)
    finally:
        display.close()
