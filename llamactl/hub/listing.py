"""What the Hub says about a repository: its files (sizes, sha256 or git blob ids), commit
and license family; which files a quant tag or a path means; the license texts it
publishes. huggingface_hub is imported inside functions only."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from llamactl import paths
from llamactl.errors import AccessDenied, LlamactlError, NetworkError, NotFound

_QUANT_RE = re.compile(
    r"(?:^|[-._])((?:ud-)?(?:i?q\d(?:_[a-z0-9]+)*|tq\d(?:_[a-z0-9]+)*|mxfp4(?:_[a-z0-9]+)*"
    r"|bf16|fp16|fp32|f16|f32))$",
    re.I,
)
LICENSE_FILE_RE = re.compile(r"^(license|licence|use_policy)([._-].*)?$", re.I)


# ---------------------------------------------------------------------------- file names

def split_parts(filename: str) -> tuple[str, int, int] | None:
    """("dir/base", part, total) for a split GGUF part name, else None."""
    from llamactl.gguf_split import parse_split_name

    split = parse_split_name(filename)
    return None if split is None else (split.stem, split.no, split.count)


def quant_of(filename: str) -> str | None:
    """The quant label in a GGUF file name ("Q4_K_M", "UD-Q4_K_XL"), or None."""
    name = filename.rsplit("/", 1)[-1]
    split = split_parts(name)
    stem = split[0] if split else (name[:-5] if name.lower().endswith(".gguf") else name)
    m = _QUANT_RE.search(stem)
    return m.group(1).upper() if m else None


def is_model_gguf(filename: str) -> bool:
    base = filename.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not base.startswith(("mmproj", "imatrix"))


# ---------------------------------------------------------------------------- listing

@dataclass
class RemoteFile:
    filename: str
    size: int | None
    sha256: str | None = None     # LFS files
    blob_id: str | None = None    # git blob sha1 (non-LFS files)

    @property
    def etag(self) -> str | None:
        return self.sha256 or self.blob_id


@dataclass
class RepoListing:
    repo: str
    commit: str
    files: list[RemoteFile]
    license_family: str | None
    gated: Any = False

    def file(self, filename: str) -> RemoteFile | None:
        for f in self.files:
            if f.filename == filename:
                return f
        return None

    def license_files(self) -> list[str]:
        # the license first, then the Acceptable Use Policy
        return sorted((f.filename for f in self.files
                       if "/" not in f.filename and LICENSE_FILE_RE.match(f.filename)),
                      key=lambda n: (n.lower().startswith("use"), n))

    def quants(self) -> list[str]:
        return sorted({q for f in self.files if is_model_gguf(f.filename)
                       for q in [quant_of(f.filename)] if q})


def endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def sync_offline_mode() -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import; llamactl reads its settings at call time.
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    constants.HF_HUB_OFFLINE = value.strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def hub_errors(repo: str, what: str = "") -> Iterator[None]:
    """Turn huggingface_hub and transport errors into LlamactlErrors (tokens never shown)."""
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except LlamactlError:
        raise
    except hf_errors.GatedRepoError as exc:  # before RepositoryNotFoundError: it is a subclass
        code = getattr(getattr(exc, "response", None), "status_code", None)
        why = "you are not logged in" if code == 401 else "your token has no access to it"
        raise AccessDenied(
            f"{repo} is a gated repository and {why}",
            hint=f"request access at {endpoint()}/{repo}, then log in with `hf auth login` "
                 "or set HF_TOKEN",
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise NotFound(f"repository {repo} not found on {endpoint()}",
                       hint="check the name; for a private repository log in with "
                            "`hf auth login` or set HF_TOKEN") from None
    except hf_errors.RevisionNotFoundError:
        raise NotFound(f"revision not found in {repo}",
                       hint="check --revision (a branch, tag or commit)") from None
    except hf_errors.EntryNotFoundError:
        raise NotFound(f"{what or 'file'} not found in {repo}") from None
    except hf_errors.OfflineModeIsEnabled:
        raise NetworkError("the Hub is switched off (HF_HUB_OFFLINE is set)",
                           hint="unset HF_HUB_OFFLINE to download") from None
    except hf_errors.HfHubHTTPError as exc:
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403):
            raise AccessDenied(f"the Hub refused access to {repo} (HTTP {code})",
                               hint="check your token: `hf auth login` or HF_TOKEN") from None
        raise NetworkError(f"the Hub answered HTTP {code} for {repo}{' ' + what if what else ''}",
                           hint="try again later; an interrupted download resumes") from None
    except (ConnectionError, TimeoutError) as exc:
        raise NetworkError(f"cannot reach {endpoint()}: {exc}",
                           hint="check the network (or HF_ENDPOINT); run the pull again to resume") from None
    except Exception as exc:
        import httpx2

        if isinstance(exc, httpx2.HTTPError):
            raise NetworkError(f"network error talking to {endpoint()}: {type(exc).__name__}",
                               hint="check the network; run the pull again to resume") from None
        raise


def list_repo(repo: str, revision: str | None = None) -> RepoListing:
    """The files of a repository with their sizes and hashes, and its license family.
    Works for gated repositories without a token (as on the Hub)."""
    from huggingface_hub import HfApi

    from llamactl import licenses

    sync_offline_mode()
    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(repo, revision=revision, files_metadata=True)
    files = []
    for s in info.siblings or []:
        lfs = s.lfs
        files.append(RemoteFile(
            filename=s.rfilename,
            size=(lfs.size if lfs else None) or s.size,
            sha256=(lfs.sha256 if lfs else None),
            blob_id=None if lfs else s.blob_id,
        ))
    card = info.card_data
    license_tag = getattr(card, "license", None) if card is not None else None
    license_name = getattr(card, "license_name", None) if card is not None else None
    family = licenses.family_from_hub(license_tag, license_name, info.tags)
    if not info.sha:
        raise NetworkError(f"the Hub gave no commit for {repo}", hint="check HF_ENDPOINT")
    return RepoListing(repo=repo, commit=info.sha, files=files, license_family=family,
                       gated=info.gated)


def choose_files(listing: RepoListing, tag: str) -> tuple[str, list[RemoteFile]]:
    """The GGUF file(s) for a quant tag (case-insensitive; split parts in order).
    Returns (label, files). NotFound lists the quants the repository has."""
    tag = tag.lower()
    groups: dict[tuple[str, str], list[RemoteFile]] = {}
    labels: dict[tuple[str, str], str] = {}
    for f in listing.files:
        if not is_model_gguf(f.filename):
            continue
        label = quant_of(f.filename)
        if not label:
            continue
        split = split_parts(f.filename)
        key = (split[0] if split else f.filename, label)
        groups.setdefault(key, []).append(f)
        labels[key] = label
    exact = [k for k in groups if labels[k].lower() == tag]
    loose = [k for k in groups if labels[k].lower().endswith("-" + tag)]
    keys = exact or loose
    if not keys:
        have = listing.quants()
        raise NotFound(
            f"{listing.repo} has no {tag.upper()} GGUF",
            hint=(f"available: {', '.join(q.lower() for q in have)}" if have
                  else f"it holds no GGUF files; pull a -GGUF repository, or convert this "
                       f"checkpoint: `llamactl pull hf.co/{listing.repo} --from safetensors`"),
        )
    keys.sort(key=lambda k: (k[0].count("/"), k[0]))
    key = keys[0]
    return labels[key], _ordered_parts(groups[key], listing.repo)


PROJECTOR_ORDER = ("F16", "BF16", "F32", "FP16", "FP32")   # preferred over quantized projectors


def is_projector(filename: str) -> bool:
    base = filename.rsplit("/", 1)[-1].lower()
    return base.startswith("mmproj") and base.endswith(".gguf")


def choose_projector(listing: RepoListing, tag: str | None, want: str | None = None) -> RemoteFile | None:
    """The vision projector (mmproj*.gguf) to fetch with a model of quant `tag`: the one of
    the model's own precision when the model is F16/BF16/F32, else F16, then BF16, then F32,
    then a quantized one; `want` (a quant label, e.g. "q8_0") asks for that one (NotFound
    naming what there is). None when the repository publishes none."""
    found = [f for f in listing.files if is_projector(f.filename)]
    if not found:
        if want:
            raise NotFound(f"{listing.repo} publishes no vision projector (mmproj*.gguf)")
        return None
    labelled = [((quant_of(f.filename) or "").upper(), f) for f in found]
    if want:
        match = [f for label, f in labelled if label == want.upper()]
        if not match:
            raise NotFound(f"{listing.repo} has no {want.upper()} projector",
                           hint="available: " + ", ".join(sorted({lbl.lower() or f.filename
                                                                   for lbl, f in labelled})))
        return match[0]
    own = (tag or "").upper()
    order = ([own] if own in PROJECTOR_ORDER else []) + list(PROJECTOR_ORDER)

    def rank(item: tuple[str, RemoteFile]) -> tuple[int, int, str]:
        label, f = item
        pos = order.index(label) if label in order else len(order)
        return (pos, -(f.size or 0), f.filename)   # among quantized ones: the largest

    return sorted(labelled, key=rank)[0][1]


def _ordered_parts(files: list[RemoteFile], repo: str) -> list[RemoteFile]:
    split = [(split_parts(f.filename), f) for f in files]
    if all(s is None for s, _ in split):
        return files[:1]
    parts = sorted((s[1], s[2], f) for s, f in split if s is not None)
    total = parts[0][1]
    numbers = [p for p, _, _ in parts]
    if numbers != list(range(1, total + 1)):
        missing = sorted(set(range(1, total + 1)) - set(numbers))
        raise NotFound(f"{repo}: split GGUF {parts[0][2].filename} is missing part(s) "
                       f"{', '.join(map(str, missing))} of {total}")
    return [f for _, _, f in parts]


def files_for_path(listing: RepoListing, filename: str) -> list[RemoteFile]:
    """hf://OWNER/REPO/PATH: that file, or every part of the split model it belongs to."""
    target = listing.file(filename)
    if target is None:
        ggufs = [f.filename for f in listing.files if is_model_gguf(f.filename)]
        raise NotFound(f"{filename} not found in {listing.repo}",
                       hint=f"GGUF files there: {', '.join(ggufs[:8]) or 'none'}")
    split = split_parts(filename)
    if not split:
        return [target]
    group = [f for f in listing.files
             if (s := split_parts(f.filename)) is not None and s[0] == split[0]]
    return _ordered_parts(group, listing.repo)



# ---------------------------------------------------------------------------- safetensors checkpoints

_CHECKPOINT_FILES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
    "model.safetensors.index.json",
    "preprocessor_config.json", "processor_config.json",   # Llama 4's image preprocessing
}


def checkpoint_files(listing: RepoListing) -> list[RemoteFile]:
    """What conversion needs from a safetensors repository: config, tokenizer and the
    top-level *.safetensors shards (not `original/`'s consolidated weights)."""
    files = [f for f in listing.files if "/" not in f.filename
             and (f.filename in _CHECKPOINT_FILES or f.filename.endswith(".safetensors"))]
    names = {f.filename for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise NotFound(f"{listing.repo} is not a safetensors checkpoint (no config.json and "
                       "*.safetensors at its top level)",
                       hint="pull a GGUF instead (without --from), or name another repository")
    return sorted(files, key=lambda f: (f.filename.endswith(".safetensors"), f.filename))


def fetch_license_texts(listing: RepoListing, limit: int = 2) -> list[tuple[str, str]]:
    """The license files of a repository (LICENSE, USE_POLICY.md ...) as (name, text);
    whatever cannot be fetched (a gated repository, say) is skipped."""
    from huggingface_hub import hf_hub_download

    sync_offline_mode()
    texts = []
    for name in listing.license_files()[:limit]:
        try:
            local = hf_hub_download(listing.repo, name, revision=listing.commit,
                                    cache_dir=str(paths.hf_hub_cache()), endpoint=endpoint())
            texts.append((name, Path(local).read_text(encoding="utf-8", errors="replace")))
        except Exception:  # noqa: BLE001 - a license text is a courtesy; the summary is shown anyway
            continue
    return texts
