"""A model reference -> a model on this machine: the one function every verb, the server and
the draft model call (`resolve`). One read of the registry, one parse of the reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from llamactl import refs, registry
from llamactl.errors import NotFound
from llamactl.models.pull import Confirm, PullProgress, pull_gguf
from llamactl.refs import ModelRef


@dataclass(frozen=True)
class LocalModel:
    """A model whose files are on this machine."""

    name: str                           # the registry name; for a loose .gguf, its path as given
    path: Path                          # the file to load (the first part of a split model)
    entry: dict[str, Any] | None        # its registry entry; None for a loose .gguf file
    ref: ModelRef | None                # the parsed reference; None when the text was a registry name
    status: str                         # "registered" | "pulled" (by this call) | "file"

    @property
    def license(self) -> str | None:
        """The license family recorded at pull time (None for a loose file: read its header)."""
        return (self.entry or {}).get("license")

    @property
    def files(self) -> list[Path]:
        """Every file of the model, first part first (a loose split model's parts from its
        name, llama.cpp's rule)."""
        if self.entry is None:
            from llamactl.gguf_split import split_parts

            return split_parts(self.path)
        return [Path(f["path"]) for f in self.entry.get("files") or []] or [self.path]

    @property
    def pulled(self) -> bool:
        return self.status == "pulled"


class Found(NamedTuple):
    """What a reference names locally, files not checked (find)."""

    text: str                           # the reference as typed (stripped)
    entry: dict[str, Any] | None        # the registry entry it names, or None
    ref: ModelRef | None                # the parsed reference; None when `text` is a registered name

    @property
    def is_file(self) -> bool:
        """A .gguf path (never a registry entry)."""
        return self.ref is not None and self.ref.kind == "path"


def find(ref: str, models: dict[str, dict[str, Any]] | None = None) -> Found:
    """The registry entry a reference names, without the network and without checking the
    entry's files (`rm` removes a model whose files are gone). `models`: a registry.read()
    snapshot (read now when not given)."""
    text = ref.strip()
    models = registry.read() if models is None else models
    entry = models.get(text)
    if entry is not None:
        return Found(text, entry, None)
    parsed = refs.parse(text)
    return Found(text, registry.lookup(parsed, models), parsed)


def resolve(ref: str | Found, *, pull: bool = True, accept_license: bool = False,
            confirm: Confirm | None = None, progress: PullProgress | None = None) -> LocalModel:
    """Turn what a user typed into a model on this machine, pulling it first when allowed.

    `ref`, tried in this order:
      1. a registered name, exactly as `llamactl list` shows it ("tiny:q8_0");
      2. a .gguf path (`./m.gguf`, `/x/m-00001-of-00003.gguf`, `~/m.gguf`): used as is;
      3. a catalog name[:tag] ("1b", "llama3.2-1b:q8_0"), hf.co/OWNER/REPO[:TAG] or
         hf://OWNER/REPO/FILE: its registered entry (default tag q4_k_m, or the catalog's).

    A model not on this machine (or a Hub model whose files are gone) is pulled when `pull`
    is true: the license gate applies (`accept_license` accepts and records it,
    `confirm(family, plan)` asks; without either, LicenseNotAccepted, exit 3), download
    callbacks go to `progress`. With `pull=False` nothing touches the network: NotFound.

    `ref` may also be what find(text) returned (a caller that looked first).

    Raises UsageError (2) for a malformed reference, NotFound (4) for an unknown model or a
    missing file, and whatever a pull raises (3, 5, 6, 7, 8). Never prints."""
    # one read of the registry, at most one parse
    text, entry, parsed = ref if isinstance(ref, Found) else find(ref)
    if parsed is not None and parsed.kind == "path":
        assert parsed.path is not None
        if not parsed.path.is_file():
            raise NotFound(f"no such file: {parsed.path}")
        return LocalModel(name=text, path=parsed.path, entry=None, ref=parsed, status="file")
    if entry is not None and registry.files_present(entry):
        return LocalModel(name=entry["name"], path=Path(entry["path"]), entry=entry, ref=parsed,
                          status="registered")
    if entry is not None and (entry.get("source") != "hub" or not pull):
        raise NotFound(f"the file of {entry['name']} is gone: {entry.get('path')}",
                       hint=(f"pull it again (`llamactl pull {entry['name']}`), or remove it: "
                             if entry.get("source") == "hub" else "remove it: ")
                            + f"`llamactl rm {entry['name']}`")
    if not pull:
        raise NotFound(f"{text} is not on this machine",
                       hint=f"pull it first: `llamactl pull {text}` (see `llamactl list`)")
    if parsed is None:   # a registered Hub model whose files are gone: fetch them again
        parsed = refs.parse(entry["name"])  # type: ignore[index]
    pulled, status = pull_gguf(parsed, accept_license=accept_license, confirm=confirm,
                               progress=progress, checked=True)
    return LocalModel(name=pulled["name"], path=Path(pulled["path"]), entry=pulled, ref=parsed,
                      status="pulled" if status == "pulled" else "registered")
