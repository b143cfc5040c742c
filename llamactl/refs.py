"""Model references: what a user types to name a model.

    NAME[:TAG]                a catalog model (llama3.2-1b, scout:q8_0)
    hf.co/OWNER/REPO[:TAG]    any GGUF repository on the Hub
    hf://OWNER/REPO[/PATH]    a repository, or one file in it
    ./model.gguf, /x/y.gguf   a local GGUF file

A tag is a quant name (q4_k_m, ud-q4_k_xl), compared case-insensitively. Parsing never
touches the network."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llamactl import catalog
from llamactl.catalog import CatalogEntry
from llamactl.errors import UsageError

DEFAULT_TAG = "q4_k_m"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")


@dataclass
class ModelRef:
    raw: str
    kind: str                       # "path" | "catalog" | "hf"
    path: Path | None = None        # kind == "path"
    entry: CatalogEntry | None = None  # kind == "catalog"
    repo: str | None = None         # kind == "hf"
    tag: str | None = None          # lower-case quant tag, None when not given
    filename: str | None = None     # hf://OWNER/REPO/PATH

    def with_tag(self, tag: str | None) -> str:
        """The registry name of this reference with `tag` (lower-case)."""
        tag = (tag or "").lower()
        if self.kind == "catalog":
            assert self.entry is not None
            return f"{self.entry.name}:{tag}" if tag else self.entry.name
        if self.kind == "hf":
            if self.filename and not tag:
                return f"hf://{self.repo}/{self.filename}"
            return f"hf.co/{self.repo}:{tag}" if tag else f"hf.co/{self.repo}"
        return str(self.path)

    @property
    def default_tag(self) -> str:
        if self.kind == "catalog" and self.entry is not None:
            return self.entry.default_tag
        return DEFAULT_TAG


def looks_like_path(text: str) -> bool:
    return (text.lower().endswith(".gguf") or text.startswith(("/", "./", "../", "~"))
            or "\\" in text)


def _split_tag(text: str) -> tuple[str, str | None]:
    if ":" in text:
        base, tag = text.rsplit(":", 1)
        if not tag or not _TAG_RE.match(tag):
            raise UsageError(f"bad tag {tag!r} in {text!r}",
                             hint="a tag is a quant name such as q4_k_m or q8_0")
        return base, tag.lower()
    return text, None


def parse(text: str) -> ModelRef:
    raw = text
    text = text.strip()
    if not text:
        raise UsageError("empty model reference",
                         hint="name a catalog model (`llamactl models`), hf.co/OWNER/REPO[:TAG] or a .gguf file")
    if text.startswith("hf://"):
        body = text[len("hf://"):].strip("/")
        parts = body.split("/")
        if len(parts) < 2:
            raise UsageError(f"bad Hub reference {raw!r}", hint="use hf://OWNER/REPO[/PATH]")
        repo = "/".join(parts[:2])
        rest = "/".join(parts[2:])
        tag = None
        if rest:
            filename = rest
        else:
            repo, tag = _split_tag(repo)
            filename = None
        if not _REPO_RE.match(repo):
            raise UsageError(f"bad repository name {repo!r}", hint="use hf://OWNER/REPO[/PATH]")
        if filename and not filename.lower().endswith(".gguf"):
            raise UsageError(f"{filename!r} is not a .gguf file", hint="name a .gguf file in the repository")
        return ModelRef(raw=raw, kind="hf", repo=repo, tag=tag, filename=filename)
    lower = text.lower()
    for prefix in _HF_PREFIXES:
        if lower.startswith(prefix):
            body = text[len(prefix):].strip("/")
            body, tag = _split_tag(body)
            if not _REPO_RE.match(body):
                raise UsageError(f"bad Hub reference {raw!r}", hint="use hf.co/OWNER/REPO[:TAG]")
            return ModelRef(raw=raw, kind="hf", repo=body, tag=tag)
    if looks_like_path(text):
        return ModelRef(raw=raw, kind="path", path=Path(text).expanduser())
    name, tag = _split_tag(text)
    entry = catalog.find(name)
    if entry is None:
        if Path(text).exists():
            return ModelRef(raw=raw, kind="path", path=Path(text))
        raise catalog.unknown(name)
    return ModelRef(raw=raw, kind="catalog", entry=entry, tag=tag)
