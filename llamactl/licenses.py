"""Llama license families, acceptance records and the gate.

Meta publishes each generation of Llama under its own community license and Acceptable Use
Policy. Before llamactl downloads the weights of a model in one of these families, the
family's license must have been accepted on this machine: interactively, with
`--accept-license`, or with `llamactl license accept FAMILY`. Acceptance is recorded in
`<config>/licenses.json` (family, sha256 of the text shown if any, time, llamactl version).

The summaries below are llamactl's own plain-language reading of the licenses; they are
not the licenses, which remain the binding text."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llamactl import __version__, paths
from llamactl.errors import LicenseNotAccepted, LlamactlError, NotFound
from llamactl.fsutil import atomic_write_json, file_lock, read_json

RECORD_FILE = "licenses.json"


@dataclass(frozen=True)
class Family:
    id: str
    title: str
    url: str
    policy_url: str
    eu_multimodal: bool  # no multimodal rights for those domiciled in the EU

    def summary(self) -> list[str]:
        points = [
            f"Weights come under the {self.title}. Using them means agreeing to it.",
            "Anything you distribute that is built on these models must say "
            "\"Built with Llama\" where people can see it (a website, the product's "
            "documentation or its interface).",
            "A model you build from these weights and distribute must carry the word "
            "\"Llama\" at the start of its name.",
            "If your products or services had more than 700 million monthly active users "
            "on the model's release date, you need a separate license from Meta.",
        ]
        if self.eu_multimodal:
            points.append(
                "No rights are granted to the multimodal models of this family to individuals "
                "or companies domiciled in the European Union (end users of a product that "
                "includes them are not affected).")
        points.append(f"Meta's Acceptable Use Policy applies: {self.policy_url}")
        points.append(f"The license text: {self.url}")
        return points


FAMILIES: dict[str, Family] = {
    f.id: f
    for f in (
        Family("llama2", "Llama 2 Community License", "https://ai.meta.com/llama/license/",
               "https://ai.meta.com/llama/use-policy/", False),
        Family("llama3", "Meta Llama 3 Community License",
               "https://www.llama.com/llama3/license/",
               "https://www.llama.com/llama3/use-policy/", False),
        Family("llama3.1", "Llama 3.1 Community License",
               "https://www.llama.com/llama3_1/license/",
               "https://www.llama.com/llama3_1/use-policy/", False),
        Family("llama3.2", "Llama 3.2 Community License",
               "https://www.llama.com/llama3_2/license/",
               "https://www.llama.com/llama3_2/use-policy/", True),
        Family("llama3.3", "Llama 3.3 Community License",
               "https://www.llama.com/llama3_3/license/",
               "https://www.llama.com/llama3_3/use-policy/", False),
        Family("llama4", "Llama 4 Community License",
               "https://www.llama.com/llama4/license/",
               "https://www.llama.com/llama4/use-policy/", True),
    )
}

_FAMILY_RE = re.compile(r"llama[\s_-]*(\d)(?:[._](\d))?", re.I)


def normalize(text: str | None) -> str | None:
    """A license family id from a Hub license tag ("llama3.2", "llama3_2"), a GGUF
    `general.license` ("Llama 3.2 Community License", a llama.com URL), or None."""
    if not text:
        return None
    text = str(text).strip().lower()
    if text in FAMILIES:
        return text
    match = _FAMILY_RE.search(text.replace("meta-llama", "").replace("meta llama", "llama"))
    if not match:
        return None
    major, minor = match.group(1), match.group(2)
    candidate = f"llama{major}.{minor}" if minor else f"llama{major}"
    if candidate in FAMILIES:
        return candidate
    return f"llama{major}" if f"llama{major}" in FAMILIES else None


def family_from_hub(license_tag: str | None, license_name: str | None = None,
                    tags: list[str] | None = None) -> str | None:
    for value in (license_tag, license_name):
        family = normalize(value) if value and value != "other" else None
        if family:
            return family
    for tag in tags or []:
        if tag.lower().startswith("license:"):
            family = normalize(tag.split(":", 1)[1])
            if family:
                return family
    return None


def get_family(family_id: str) -> Family:
    family = FAMILIES.get(family_id.lower()) if family_id else None
    if family is None:
        raise NotFound(f"unknown license family {family_id!r}",
                       hint=f"known families: {', '.join(FAMILIES)}")
    return family


def _record_path() -> Path:
    return paths.config_dir() / RECORD_FILE


def _read_doc(path: Path) -> dict[str, Any]:
    """{"accepted": {FAMILY: RECORD}}; a file of another shape is an error naming it (it is
    never rewritten over)."""
    doc = read_json(path, default=None)
    if doc is None:
        return {"accepted": {}}
    if not isinstance(doc, dict) or not isinstance(doc.get("accepted", {}), dict):
        raise LlamactlError(f"{path} is not a license record ({{\"accepted\": {{...}}}})",
                            hint="move it aside; accepted licenses are then asked for again")
    doc.setdefault("accepted", {})
    return doc


def records() -> dict[str, dict[str, Any]]:
    return _read_doc(_record_path())["accepted"]


def is_accepted(family_id: str) -> bool:
    return family_id in records()


def accept(family_id: str, *, text_sha256: str | None = None, how: str = "command") -> dict[str, Any]:
    family = get_family(family_id)
    path = _record_path()
    with file_lock(path.with_name(path.name + ".lock")):
        doc = _read_doc(path)
        accepted = doc["accepted"]
        record = {
            "family": family.id,
            "title": family.title,
            "accepted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "text_sha256": text_sha256,
            "llamactl_version": __version__,
            "how": how,
        }
        accepted[family.id] = record
        atomic_write_json(path, doc)
    return record


def revoke(family_id: str) -> bool:
    """Forget an acceptance; True when there was one."""
    family = get_family(family_id)
    path = _record_path()
    with file_lock(path.with_name(path.name + ".lock")):
        doc = _read_doc(path)
        if family.id not in doc["accepted"]:
            return False
        del doc["accepted"][family.id]
        atomic_write_json(path, doc)
    return True


def not_accepted_error(family_id: str, model: str) -> LicenseNotAccepted:
    family = get_family(family_id)
    return LicenseNotAccepted(
        f"{model} comes under the {family.title}, which has not been accepted on this machine",
        hint=f"read it (`llamactl license show {family.id}`), then accept it: run again with "
             f"--accept-license, or run `llamactl license accept {family.id}`",
    )


# The answer of an interactive prompt: the sha256 of the text shown, True (accepted, no text
# shown), or False/None (refused).
Confirm = Callable[[str], "str | bool | None"]


def gate(family_id: str | None, model: str, *, accept_license: bool = False,
         confirm: Confirm | None = None) -> None:
    """Stop unless the license family of `model` is accepted on this machine. Called before
    any weights are fetched. A family llamactl does not know (None, "apache-2.0") passes.
    `accept_license` records the acceptance; `confirm(family)` asks (interactive); without
    either, LicenseNotAccepted (exit 3) naming the commands that accept it."""
    if not family_id or family_id not in FAMILIES or is_accepted(family_id):
        return
    if accept_license:
        accept(family_id, how="--accept-license")
        return
    if confirm is None:
        raise not_accepted_error(family_id, model)
    answer = confirm(family_id)
    if answer is False or answer is None:
        raise LicenseNotAccepted(f"the {get_family(family_id).title} was not accepted; "
                                 "nothing was downloaded",
                                 hint=f"accept it later with `llamactl license accept {family_id}`")
    accept(family_id, text_sha256=answer if isinstance(answer, str) else None, how="prompt")
