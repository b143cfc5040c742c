"""Everything that talks to the Hugging Face Hub: listing a repository, choosing the GGUF
files for a quant tag, and downloading them into the Hugging Face cache with resume and
sha256 verification.

Downloads go through huggingface_hub (its HTTP session, headers, token, endpoint and
retries) into its cache layout (`models--OWNER--REPO/blobs/<etag>` plus a relative symlink
in `snapshots/<commit>/`), so other Hugging Face tools see the same files. Two things
huggingface_hub 2.4.0 does not do are done here:

* resume across processes: each blob is downloaded into a stable `blobs/<etag>.incomplete`
  (under the same per-blob lock file huggingface_hub uses); a later pull continues it with
  a `Range` request instead of starting over;
* integrity: every file is checked against the sha256 the Hub publishes for it (the git
  blob sha1 for small non-LFS files) before it is placed in the cache and registered. A
  mismatch deletes the file and raises IntegrityError (exit 7).

huggingface_hub is imported inside functions only."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from llamactl import paths
from llamactl.errors import (AccessDenied, IntegrityError, LlamactlError, NetworkError, NotFound)

_SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.I)
_QUANT_RE = re.compile(
    r"(?:^|[-._])((?:ud-)?(?:i?q\d(?:_[a-z0-9]+)*|tq\d(?:_[a-z0-9]+)*|mxfp4(?:_[a-z0-9]+)*"
    r"|bf16|fp16|fp32|f16|f32))$",
    re.I,
)
LICENSE_FILE_RE = re.compile(r"^(license|licence|use_policy)([._-].*)?$", re.I)
_HASH_CHUNK = 8 * 1024 * 1024


# ---------------------------------------------------------------------------- file names

def split_parts(filename: str) -> tuple[str, int, int] | None:
    """("dir/base", part, total) for a split GGUF part name, else None."""
    m = _SPLIT_RE.match(filename)
    if not m:
        return None
    return m.group("base"), int(m.group("part")), int(m.group("total"))


def quant_of(filename: str) -> str | None:
    """The quant label in a GGUF file name ("Q4_K_M", "UD-Q4_K_XL"), or None."""
    name = filename.rsplit("/", 1)[-1]
    split = split_parts(name)
    stem = split[0] if split else (name[:-5] if name.lower().endswith(".gguf") else name)
    m = _QUANT_RE.search(stem)
    return m.group(1).upper() if m else None


def _is_model_gguf(filename: str) -> bool:
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
        return sorted({q for f in self.files if _is_model_gguf(f.filename)
                       for q in [quant_of(f.filename)] if q})


@dataclass
class PullPlan:
    name: str                     # registry name, e.g. "llama3.2-1b:q4_k_m"
    model: str
    tag: str | None
    repo: str
    commit: str
    requested_revision: str | None
    files: list[RemoteFile]       # first part first
    license_family: str | None
    listing: RepoListing | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _sync_offline_mode() -> None:
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

    _sync_offline_mode()
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
        if not _is_model_gguf(f.filename):
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
        ggufs = [f.filename for f in listing.files if _is_model_gguf(f.filename)]
        raise NotFound(f"{filename} not found in {listing.repo}",
                       hint=f"GGUF files there: {', '.join(ggufs[:8]) or 'none'}")
    split = split_parts(filename)
    if not split:
        return [target]
    group = [f for f in listing.files
             if (s := split_parts(f.filename)) is not None and s[0] == split[0]]
    return _ordered_parts(group, listing.repo)


# ---------------------------------------------------------------------------- the cache

def repo_folder(repo: str) -> Path:
    return paths.hf_hub_cache() / ("models--" + repo.replace("/", "--"))


def blob_path(repo: str, etag: str) -> Path:
    return repo_folder(repo) / "blobs" / etag


def pointer_path(repo: str, commit: str, filename: str) -> Path:
    return repo_folder(repo) / "snapshots" / commit / Path(*filename.split("/"))


def incomplete_path(repo: str, etag: str) -> Path:
    return repo_folder(repo) / "blobs" / f"{etag}.incomplete"


def _blob_lock(repo: str, etag: str) -> Path:
    # The same lock file huggingface_hub takes for this blob, so the two never write it at once.
    return paths.hf_hub_cache() / ".locks" / ("models--" + repo.replace("/", "--")) / f"{etag}.lock"


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        import shutil

        shutil.copy2(blob, pointer)  # no symlinks here: a copy, as huggingface_hub does


def _write_ref(repo: str, revision: str | None, commit: str) -> None:
    if not revision or revision == commit:
        revision = "main" if not revision else None
    if revision:
        ref = repo_folder(repo) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text() != commit:
            ref.write_text(commit)


class DownloadProgress:
    """Callbacks from a download (the CLI draws them; the default draws nothing)."""

    def file_start(self, filename: str, total: int | None, done: int, action: str) -> None:
        """action: "download" | "resume" | "verify" """

    def advance(self, n: int) -> None:
        pass

    def file_end(self, filename: str, status: str) -> None:
        """status: "downloaded" | "cached" | "verified" """

    def waiting(self, what: str) -> None:
        pass


def _file_hash(path: Path, algo: str, progress: DownloadProgress | None = None,
               git_size: int | None = None) -> str:
    h = hashlib.new(algo)
    if git_size is not None:
        h.update(f"blob {git_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
            if progress:
                progress.advance(len(chunk))
    return h.hexdigest()


def verify_file(path: Path, rf: RemoteFile, progress: DownloadProgress | None = None) -> bool:
    """True when `path` has the published sha256 (or git blob sha1) and size."""
    size = path.stat().st_size
    if rf.size is not None and size != rf.size:
        return False
    if rf.sha256:
        return _file_hash(path, "sha256", progress) == rf.sha256.lower()
    if rf.blob_id:
        return _file_hash(path, "sha1", progress, git_size=size) == rf.blob_id.lower()
    return True


class _HashingWriter:
    """A file wrapper for huggingface_hub's http_get: hashes and counts what is written.
    If the download rewinds (the server ignored the Range), the running hash is dropped
    and the file is hashed again at the end."""

    def __init__(self, fh: Any, hasher: Any, progress: DownloadProgress | None):
        self.fh, self.hasher, self.progress, self.valid = fh, hasher, progress, True

    def write(self, data: bytes) -> int:
        n = self.fh.write(data)
        self.hasher.update(data)
        if self.progress:
            self.progress.advance(len(data))
        return n

    def tell(self) -> int:
        return self.fh.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        if not (whence == 0 and pos == self.fh.tell()):
            self.valid = False
        return self.fh.seek(pos, whence)

    def truncate(self, size: int | None = None) -> int:
        self.valid = False
        return self.fh.truncate(size)

    def flush(self) -> None:
        self.fh.flush()


def _fetch_blob(repo: str, commit: str, rf: RemoteFile, progress: DownloadProgress) -> tuple[Path, str]:
    """Make blobs/<etag> hold the verified content of `rf`; return (blob, status)."""
    from huggingface_hub import file_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    etag = rf.etag
    assert etag is not None
    blob = blob_path(repo, etag)
    partial = incomplete_path(repo, etag)
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = _blob_lock(repo, etag)
    from llamactl.fsutil import file_lock

    with file_lock(lock):
        if blob.exists():
            progress.file_start(rf.filename, rf.size, 0, "verify")
            if not verify_file(blob, rf, progress):
                blob.unlink(missing_ok=True)
                raise IntegrityError(
                    f"{rf.filename} in the Hugging Face cache does not match the sha256 published "
                    f"by {repo}; the bad file was deleted",
                    hint="run the pull again to download it afresh")
            return blob, "verified"

        url = hf_hub_url(repo, rf.filename, revision=commit, endpoint=endpoint())
        with hub_errors(repo, rf.filename):
            meta = file_download.get_hf_file_metadata(url, endpoint=endpoint(), retry_on_errors=True)
        size = rf.size if rf.size is not None else meta.size
        headers = build_hf_headers()
        location = meta.location or url
        if urlparse(location).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)
            headers.pop("Authorization", None)

        resume = partial.stat().st_size if partial.exists() else 0
        if size is not None and resume > size:
            partial.unlink()
            resume = 0
        hasher = hashlib.sha256() if rf.sha256 else hashlib.sha1()
        if not rf.sha256 and size is not None:
            hasher.update(f"blob {size}\0".encode())
        progress.file_start(rf.filename, size, resume, "resume" if resume else "download")
        if resume:
            with open(partial, "rb") as fh:
                remaining = resume
                while remaining and (chunk := fh.read(min(_HASH_CHUNK, remaining))):
                    hasher.update(chunk)
                    remaining -= len(chunk)
            progress.advance(resume)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            writer = _HashingWriter(fh, hasher, progress)
            try:
                with hub_errors(repo, rf.filename):
                    file_download.http_get(location, writer, resume_size=resume, headers=headers,  # type: ignore[arg-type]
                                           expected_size=size, displayed_filename=rf.filename)
            except OSError as exc:
                if isinstance(exc, LlamactlError):
                    raise
                if exc.errno == errno.ENOSPC:
                    from llamactl.errors import InsufficientResources

                    raise InsufficientResources(
                        f"the disk filled up while downloading {rf.filename} "
                        f"({partial.stat().st_size} bytes kept in {partial.parent})",
                        hint="free some space and run the pull again; it resumes") from None
                if "Consistency check failed" in str(exc):
                    raise NetworkError(f"{rf.filename}: the download ended early",
                                       hint="run the pull again; it resumes") from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
        actual_size = partial.stat().st_size
        if writer.valid and (size is None or actual_size == size):
            digest = hasher.hexdigest()
        else:
            digest = _file_hash(partial, "sha256" if rf.sha256 else "sha1",
                                git_size=None if rf.sha256 else actual_size)
        expected = (rf.sha256 or rf.blob_id or "").lower()
        if (size is not None and actual_size != size) or (expected and digest != expected):
            partial.unlink(missing_ok=True)
            raise IntegrityError(
                f"{rf.filename} from {repo} does not match its published sha256 "
                f"(got {digest[:16]}…, expected {expected[:16]}…); the bad file was deleted",
                hint="run the pull again to download it afresh")
        os.chmod(partial, 0o644 & ~_umask())
        os.replace(partial, blob)
        return blob, "downloaded"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cached_state(plan: PullPlan) -> list[tuple[RemoteFile, str, int]]:
    """Per file: ("blob", size) when in the cache, ("partial", bytes) or ("missing", 0)."""
    out = []
    for rf in plan.files:
        etag = rf.etag or ""
        blob = blob_path(plan.repo, etag)
        partial = incomplete_path(plan.repo, etag)
        if etag and blob.exists():
            out.append((rf, "blob", blob.stat().st_size))
        elif etag and partial.exists():
            out.append((rf, "partial", partial.stat().st_size))
        else:
            out.append((rf, "missing", 0))
    return out


def bytes_to_download(plan: PullPlan) -> int:
    need = 0
    for rf, state, have in cached_state(plan):
        if state != "blob":
            need += max((rf.size or 0) - have, 0)
    return need


def download(plan: PullPlan, progress: DownloadProgress | None = None) -> list[dict[str, Any]]:
    """Fetch (or verify) every file of the plan into the HF cache; return the registry's
    file records, first part first. Nothing is registered here."""
    from huggingface_hub.utils import disable_progress_bars

    from llamactl.fsutil import check_free_space

    _sync_offline_mode()
    disable_progress_bars()
    progress = progress or DownloadProgress()
    for rf in plan.files:
        if not rf.etag:
            raise IntegrityError(f"{plan.repo} publishes no hash for {rf.filename}",
                                 hint="llamactl only installs files it can verify")
    check_free_space(paths.hf_hub_cache(), bytes_to_download(plan), what=plan.name)
    records = []
    for rf in plan.files:
        blob, status = _fetch_blob(plan.repo, plan.commit, rf, progress)
        pointer = pointer_path(plan.repo, plan.commit, rf.filename)
        _link(blob, pointer)
        progress.file_end(rf.filename, status)
        records.append({"filename": rf.filename, "path": str(pointer), "blob": str(blob),
                        "size": blob.stat().st_size, "sha256": rf.sha256, "blob_id": rf.blob_id})
    _write_ref(plan.repo, plan.requested_revision, plan.commit)
    return records


def fetch_license_texts(listing: RepoListing, limit: int = 2) -> list[tuple[str, str]]:
    """The license files of a repository (LICENSE, USE_POLICY.md ...) as (name, text);
    whatever cannot be fetched (a gated repository, say) is skipped."""
    from huggingface_hub import hf_hub_download

    _sync_offline_mode()
    texts = []
    for name in listing.license_files()[:limit]:
        try:
            local = hf_hub_download(listing.repo, name, revision=listing.commit,
                                    cache_dir=str(paths.hf_hub_cache()), endpoint=endpoint())
            texts.append((name, Path(local).read_text(encoding="utf-8", errors="replace")))
        except Exception:  # noqa: BLE001 - a license text is a courtesy; the summary is shown anyway
            continue
    return texts


# ---------------------------------------------------------------------------- pulling

def resolve_plan(ref: Any, revision: str | None = None) -> PullPlan:
    """Which repository, commit and files a reference means (network: the listing only)."""
    from llamactl.refs import DEFAULT_TAG

    if ref.kind == "catalog":
        entry = ref.entry
        tag = ref.tag or entry.default_tag
        if not entry.gguf_repos:
            raise NotFound(f"{entry.name} lists no GGUF repository",
                           hint="add \"gguf_repos\" to its catalog entry")
        misses: list[NotFound] = []
        for repo in entry.gguf_repos:
            try:
                listing = list_repo(repo, revision)
                label, files = choose_files(listing, tag)
            except NotFound as exc:  # missing repository or quant: try the next source
                misses.append(exc)
                continue
            tag = tag if label.lower() == tag else label.lower()  # q4_k_xl -> ud-q4_k_xl
            return PullPlan(name=f"{entry.name}:{tag}", model=entry.name, tag=tag, repo=repo,
                            commit=listing.commit, requested_revision=revision, files=files,
                            license_family=entry.license or listing.license_family,
                            listing=listing)
        if len(misses) == 1:
            raise misses[0]
        raise NotFound(f"none of {entry.name}'s GGUF sources has {tag.upper()}",
                       hint="; ".join(f"{m.message}" + (f" ({m.hint})" if m.hint else "")
                                      for m in misses))
    if ref.kind != "hf":
        raise NotFound(f"{ref.raw} is not a model on the Hub")
    listing = list_repo(ref.repo, revision)
    if ref.filename:
        files = files_for_path(listing, ref.filename)
        label = quant_of(files[0].filename)
        tag = label.lower() if label else None
        name = ref.with_tag(tag)
    else:
        tag = ref.tag or DEFAULT_TAG
        label, files = choose_files(listing, tag)
        tag = tag if label.lower() == tag else label.lower()
        name = ref.with_tag(tag)
    return PullPlan(name=name, model=f"hf.co/{ref.repo}", tag=tag,
                    repo=ref.repo, commit=listing.commit, requested_revision=revision,
                    files=files, license_family=listing.license_family, listing=listing)


def files_present(entry: dict[str, Any]) -> bool:
    """Every file of a registry entry is there with its recorded size."""
    files = entry.get("files") or []
    if not files:
        return False
    for f in files:
        try:
            if os.path.getsize(f["path"]) != f.get("size"):
                return False
        except OSError:
            return False
    return True


def registered_for(ref: Any) -> dict[str, Any] | None:
    """The registry entry a reference names, without touching the network."""
    from llamactl import registry
    from llamactl.refs import DEFAULT_TAG

    if ref.kind == "catalog":
        return registry.get(ref.with_tag(ref.tag or ref.entry.default_tag))
    if ref.kind != "hf":
        return None
    if ref.filename:
        for entry in registry.entries():
            if entry.get("repo") == ref.repo and any(f.get("filename") == ref.filename
                                                     for f in entry.get("files", [])):
                return entry
        return None
    entry = registry.get(ref.with_tag(ref.tag or DEFAULT_TAG))
    if entry is None and ref.tag is None:
        same = [e for e in registry.entries() if e.get("model") == ref.with_tag(None)]
        entry = same[0] if len(same) == 1 else None
    return entry


LicenseConfirm = Callable[[str, PullPlan], "str | bool | None"]


def license_gate(plan: PullPlan, *, accept_license: bool = False,
                 confirm: LicenseConfirm | None = None) -> None:
    """Stop before any weights are fetched unless the plan's license family is accepted.
    `confirm(family, plan)` (interactive) returns the sha256 of the text shown or True to
    accept, False/None to refuse; without it, LicenseNotAccepted (exit 3)."""
    from llamactl import licenses
    from llamactl.errors import LicenseNotAccepted

    family = plan.license_family
    if not family or family not in licenses.FAMILIES or licenses.is_accepted(family):
        return
    if accept_license:
        licenses.accept(family, how="--accept-license")
        return
    if confirm is None:
        raise licenses.not_accepted_error(family, plan.name)
    answer = confirm(family, plan)
    if answer is False or answer is None:
        raise LicenseNotAccepted(f"the {licenses.get_family(family).title} was not accepted; "
                                 "nothing was downloaded",
                                 hint=f"accept it later with `llamactl license accept {family}`")
    licenses.accept(family, text_sha256=answer if isinstance(answer, str) else None, how="prompt")


def _gguf_license(path: Path) -> str | None:
    from llamactl import licenses

    try:
        from llamactl.gguf_info import read_gguf

        return licenses.normalize(read_gguf(path).license)
    except LlamactlError:
        return None


def _model_lock_path(name: str) -> Path:
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    return paths.state_dir() / "locks" / f"pull-{digest}.lock"


def _present(plan: Any) -> dict[str, Any] | None:
    """The registered entry for this plan's exact revision, when all its files are here."""
    from llamactl import registry

    existing = registry.get(plan.name)
    if existing is not None and existing.get("revision") == plan.commit and files_present(existing):
        return existing
    return None


@contextlib.contextmanager
def _model_lock(plan: Any, progress: "DownloadProgress") -> Iterator[dict[str, Any] | None]:
    """One pull per model at a time. A second pull waits (saying so), then gets the entry
    the first one registered, or None when it must do the work itself."""
    from filelock import FileLock, Timeout

    lock_file = _model_lock_path(plan.name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        progress.waiting(plan.name)
        lock.acquire()
    try:
        yield _present(plan)
    finally:
        lock.release()


def pull_model(ref: Any, *, revision: str | None = None, accept_license: bool = False,
               confirm: LicenseConfirm | None = None,
               progress: DownloadProgress | None = None) -> tuple[dict[str, Any], str]:
    """Pull a catalog or Hub reference: plan, license gate, download with resume, verify,
    register. Returns (registry entry, status) with status "present" (already here,
    nothing downloaded) or "pulled". One pull per model at a time: a second one waits for
    the first and then finds the model there."""
    from llamactl import registry

    progress = progress or DownloadProgress()
    if revision is None:
        existing = registered_for(ref)
        if existing is not None and files_present(existing):
            return existing, "present"
    plan = resolve_plan(ref, revision)
    existing = _present(plan)
    if existing is not None:
        return existing, "present"
    license_gate(plan, accept_license=accept_license, confirm=confirm)

    with _model_lock(plan, progress) as existing:
        if existing is not None:
            return existing, "present"
        records = download(plan, progress)
        if plan.license_family is None:
            # Neither the catalog nor the Hub named a license: the GGUF's own
            # general.license is the last word. The file stays in the cache, unregistered,
            # until the license is accepted.
            plan.license_family = _gguf_license(Path(records[0]["path"]))
            if plan.license_family is not None:
                license_gate(plan, accept_license=accept_license, confirm=confirm)
        entry = {
            "name": plan.name,
            "model": plan.model,
            "tag": plan.tag,
            "source": "hub",
            "repo": plan.repo,
            "revision": plan.commit,
            "requested_revision": plan.requested_revision,
            "files": records,
            "path": records[0]["path"],
            "size": sum(r["size"] for r in records),
            "license": plan.license_family,
            "pulled_at": registry.now(),
        }
        return registry.put(entry), "pulled"


# ---------------------------------------------------------------------------- --from safetensors

_CHECKPOINT_FILES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
    "model.safetensors.index.json",
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


def resolve_safetensors_plan(ref: Any, quant: str, revision: str | None = None) -> PullPlan:
    if ref.kind == "catalog":
        entry = ref.entry
        if not entry.official_repo:
            raise NotFound(f"{entry.name} lists no safetensors repository",
                           hint="add \"official_repo\" to its catalog entry")
        repo, model, family = entry.official_repo, entry.name, entry.license
    elif ref.kind == "hf" and not ref.filename:
        repo, model, family = ref.repo, ref.with_tag(None), None
    else:
        from llamactl.errors import UsageError

        raise UsageError("--from safetensors takes a catalog name or hf.co/OWNER/REPO")
    listing = list_repo(repo, revision)
    tag = quant.lower()
    return PullPlan(name=f"{model}:{tag}", model=model, tag=tag, repo=repo, commit=listing.commit,
                    requested_revision=revision, files=checkpoint_files(listing),
                    license_family=family or listing.license_family, listing=listing)


def _local_file_record(path: Path) -> dict[str, Any]:
    return {"filename": path.name, "path": str(path), "blob": None,
            "size": path.stat().st_size, "sha256": _file_hash(path, "sha256")}


def pull_safetensors(ref: Any, *, quant: str = "Q4_K_M", revision: str | None = None,
                     accept_license: bool = False, confirm: LicenseConfirm | None = None,
                     progress: DownloadProgress | None = None,
                     convert_progress: Callable[[str, int, int], None] | None = None,
                     on_step: Callable[[str], None] | None = None,
                     keep_intermediate: bool = False) -> tuple[dict[str, Any], str]:
    """Download a safetensors checkpoint (verified, resumable, into the HF cache), convert it
    to GGUF, quantize it to `quant`, register the result as MODEL:QUANT in llamactl's models
    folder. The full-precision intermediate is deleted unless `keep_intermediate` (then it
    is registered too, as MODEL:F16/BF16/F32)."""
    from llamactl import registry
    from llamactl.convert import convert_checkpoint
    from llamactl.quantize import _FLOAT_TYPES, normalize_type, quantize_gguf

    progress = progress or DownloadProgress()
    step = on_step or (lambda _msg: None)
    qtype = normalize_type(quant)
    if revision is None:
        entry_name = f"{ref.entry.name if ref.kind == 'catalog' else ref.with_tag(None)}:{qtype.lower()}"
        existing = registry.get(entry_name)
        if existing is not None and files_present(existing):
            return existing, "present"
    plan = resolve_safetensors_plan(ref, qtype, revision)
    existing = _present(plan)
    if existing is not None:
        return existing, "present"
    license_gate(plan, accept_license=accept_license, confirm=confirm)

    with _model_lock(plan, progress) as existing:
        if existing is not None:
            return existing, "present"
        download(plan, progress)
        src_dir = repo_folder(plan.repo) / "snapshots" / plan.commit
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", plan.model.replace("hf.co/", "").replace("/", "--"))
        out_dir = paths.ensure(paths.models_dir() / safe)
        provenance = {"source": "converted", "repo": plan.repo, "revision": plan.commit,
                      "requested_revision": plan.requested_revision,
                      "license": plan.license_family, "converted_from": f"{plan.repo}@{plan.commit}"}
        if qtype in _FLOAT_TYPES:
            final = out_dir / f"{safe}-{qtype}.gguf"
            step(f"converting {plan.repo} to {qtype}")
            convert_checkpoint(src_dir, final, outtype=qtype.lower(), progress=convert_progress)
            intermediate = None
        else:
            pending = out_dir / f"{safe}-full.gguf"
            step(f"converting {plan.repo} to GGUF")
            result = convert_checkpoint(src_dir, pending, progress=convert_progress)
            intermediate = out_dir / f"{safe}-{result.outtype.upper()}.gguf"
            os.replace(pending, intermediate)
            final = out_dir / f"{safe}-{qtype}.gguf"
            step(f"quantizing to {qtype}")
            try:
                quantize_gguf(intermediate, final, qtype)
            finally:
                if not keep_intermediate:
                    intermediate.unlink(missing_ok=True)
        if intermediate is not None and keep_intermediate:
            itag = intermediate.stem.rsplit("-", 1)[-1].lower()
            rec = _local_file_record(intermediate)
            registry.put({"name": f"{plan.model}:{itag}", "model": plan.model, "tag": itag,
                          **provenance, "files": [rec], "path": rec["path"], "size": rec["size"],
                          "pulled_at": registry.now()})
        rec = _local_file_record(final)
        entry = {"name": plan.name, "model": plan.model, "tag": plan.tag, **provenance,
                 "files": [rec], "path": rec["path"], "size": rec["size"],
                 "pulled_at": registry.now()}
        return registry.put(entry), "pulled"
