"""Pulling a model: a published GGUF (`pull_gguf`), or a safetensors checkpoint converted and
quantized here (`pull_safetensors`). Both open the same way (`_opening`): already present?
-> plan (the Hub listing) -> license gate -> the model's lock -> present again (another
process may have pulled it meanwhile). Then they fetch, verify and register.

`pull` is the entry point for a reference as typed, checking the flag combination first."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from llamactl import licenses, paths, registry
from llamactl.errors import NotFound, UsageError
from llamactl.hub.download import DownloadProgress
from llamactl.hub.listing import RemoteFile, RepoListing
from llamactl.refs import DEFAULT_TAG, ModelRef


@dataclass
class PullPlan:
    """Which repository, commit and files a pull means; nothing fetched yet but the listing."""

    name: str                     # registry name, e.g. "llama3.2-1b:q4_k_m"
    model: str
    tag: str | None
    repo: str
    commit: str
    requested_revision: str | None
    files: list[RemoteFile]       # first part first
    license_family: str | None
    listing: RepoListing | None = None
    projector: RemoteFile | None = None   # the vision projector fetched with the model

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files) + ((self.projector.size or 0) if self.projector else 0)


class PullProgress(DownloadProgress):
    """Download callbacks (see DownloadProgress) and the later stages of a --from safetensors
    pull. The CLI draws them; this default draws nothing."""

    def step(self, message: str) -> None:
        """A stage begins: "converting REPO to GGUF", "quantizing to Q4_K_M"."""

    def convert(self, tensor: str, done: int, total: int) -> None:
        """Conversion wrote `tensor`; `done` of `total` bytes."""


# confirm(family, plan): ask whether the plan's license family is accepted. Returns the
# sha256 of the text shown or True to accept, False/None to refuse.
Confirm = Callable[[str, PullPlan], "str | bool | None"]


class Pulled(NamedTuple):
    entry: dict[str, Any]         # the registry entry
    status: str                   # "pulled" | "present" (already here, nothing downloaded)


# ---------------------------------------------------------------------------- plans

def plan_gguf(ref: ModelRef, revision: str | None = None, projector: str | None = None) -> PullPlan:
    """Which repository, commit and GGUF files a catalog or Hub reference means (network:
    the listing only). A catalog model's sources are tried in order. A repository that
    publishes a vision projector (mmproj*.gguf, Llama 4's) gets it in the plan too
    (hub.listing.choose_projector: F16/BF16 before quantized ones); `projector`: a quant
    label to ask for one ("q8_0"), or "none" for none."""
    plan = _plan_gguf_files(ref, revision)
    if projector != "none" and plan.listing is not None:
        from llamactl.hub.listing import choose_projector

        plan.projector = choose_projector(plan.listing, plan.tag, projector)
    return plan


def _plan_gguf_files(ref: ModelRef, revision: str | None = None) -> PullPlan:
    from llamactl.hub.listing import choose_files, files_for_path, list_repo, quant_of

    if ref.kind == "catalog":
        entry = ref.entry
        assert entry is not None
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
    if ref.kind != "hf" or ref.repo is None:
        raise NotFound(f"{ref.raw} is not a model on the Hub")
    listing = list_repo(ref.repo, revision)
    if ref.filename:
        files = files_for_path(listing, ref.filename)
        label = quant_of(files[0].filename)
        tag = label.lower() if label else None
    else:
        tag = ref.tag or DEFAULT_TAG
        label, files = choose_files(listing, tag)
        tag = tag if label.lower() == tag else label.lower()
    return PullPlan(name=ref.with_tag(tag), model=f"hf.co/{ref.repo}", tag=tag,
                    repo=ref.repo, commit=listing.commit, requested_revision=revision,
                    files=files, license_family=listing.license_family, listing=listing)


def _safetensors_model(ref: ModelRef) -> tuple[str, str, str | None]:
    """(repository, model name, license family from the catalog) for --from safetensors."""
    if ref.kind == "catalog":
        entry = ref.entry
        assert entry is not None
        if not entry.official_repo:
            raise NotFound(f"{entry.name} lists no safetensors repository",
                           hint="add \"official_repo\" to its catalog entry")
        return entry.official_repo, entry.name, entry.license
    if ref.kind == "hf" and not ref.filename and ref.repo is not None:
        return ref.repo, ref.with_tag(None), None
    raise UsageError("--from safetensors takes a catalog name or hf.co/OWNER/REPO, not a file")


def plan_safetensors(ref: ModelRef, qtype: str, revision: str | None = None) -> PullPlan:
    """The checkpoint files (config, tokenizer, top-level shards) to convert into MODEL:QTYPE."""
    from llamactl.hub.listing import checkpoint_files, list_repo

    repo, model, family = _safetensors_model(ref)
    listing = list_repo(repo, revision)
    tag = qtype.lower()
    return PullPlan(name=f"{model}:{tag}", model=model, tag=tag, repo=repo, commit=listing.commit,
                    requested_revision=revision, files=checkpoint_files(listing),
                    license_family=family or listing.license_family, listing=listing)


# ---------------------------------------------------------------------------- the opening

def _lock_path(name: str) -> Path:
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    return paths.state_dir() / "locks" / f"pull-{digest}.lock"


def _present(plan: PullPlan) -> dict[str, Any] | None:
    """The registered entry for this plan's exact revision, when all its files are here
    (its projector too, when the plan has one)."""
    existing = registry.get(plan.name)
    if existing is not None and existing.get("revision") == plan.commit \
            and registry.files_present(existing) and (plan.projector is None or existing.get("mmproj")):
        return existing
    return None


def gate(plan: PullPlan, *, accept_license: bool = False, confirm: Confirm | None = None) -> None:
    """The license gate for a plan (licenses.gate), before any weights are fetched."""
    licenses.gate(plan.license_family, plan.name, accept_license=accept_license,
                  confirm=(lambda family: confirm(family, plan)) if confirm is not None else None)


@contextlib.contextmanager
def _opening(known: Callable[[dict[str, dict[str, Any]]], dict[str, Any] | None],
             make_plan: Callable[[], PullPlan], *, revision: str | None, checked: bool,
             accept_license: bool, confirm: Confirm | None,
             progress: DownloadProgress) -> Iterator[tuple[PullPlan | None, dict[str, Any] | None]]:
    """Yields (plan, None) with the model's lock held when the body must fetch, or
    (plan or None, entry) when the model is already here. `known(models)` finds the entry
    a reference names without the network (skipped when `checked`: the caller looked)."""
    if revision is None and not checked:
        existing = known(registry.read())
        if existing is not None and registry.files_present(existing):
            yield None, existing
            return
    plan = make_plan()
    existing = _present(plan)
    if existing is not None:
        yield plan, existing
        return
    gate(plan, accept_license=accept_license, confirm=confirm)
    from filelock import FileLock, Timeout

    lock_file = _lock_path(plan.name)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:  # one pull per model at a time: wait for the other, then look again
        progress.waiting(plan.name)
        lock.acquire()
    try:
        yield plan, _present(plan)
    finally:
        lock.release()


# ---------------------------------------------------------------------------- pulls

def pull_gguf(ref: ModelRef, *, revision: str | None = None, accept_license: bool = False,
              confirm: Confirm | None = None, progress: DownloadProgress | None = None,
              checked: bool = False, projector: str | None = None) -> Pulled:
    """Pull a catalog or Hub GGUF reference: plan, license gate, download with resume,
    verify, register. The repository's vision projector comes along under the same rules
    (see plan_gguf; registered as the entry's `mmproj`). `checked`: the caller already
    found it is not registered."""
    from llamactl.hub.download import download

    progress = progress or PullProgress()
    with _opening(lambda models: registry.lookup(ref, models), lambda: plan_gguf(ref, revision, projector),
                  revision=revision, checked=checked, accept_license=accept_license,
                  confirm=confirm, progress=progress) as (plan, existing):
        if existing is not None:
            return Pulled(existing, "present")
        assert plan is not None
        wanted = plan.files + ([plan.projector] if plan.projector is not None else [])
        records = download(plan.repo, plan.commit, wanted, revision=plan.requested_revision,
                           what=plan.name, progress=progress)
        mmproj = records.pop() if plan.projector is not None else None
        if plan.license_family is None:
            # Neither the catalog nor the Hub named a license: the GGUF's own
            # general.license is the last word. The file stays in the cache, unregistered,
            # until the license is accepted.
            plan.license_family = _gguf_license(Path(records[0]["path"]))
            gate(plan, accept_license=accept_license, confirm=confirm)
        entry = {
            "name": plan.name, "model": plan.model, "tag": plan.tag, "source": "hub",
            "repo": plan.repo, "revision": plan.commit,
            "requested_revision": plan.requested_revision, "files": records,
            "path": records[0]["path"], "size": sum(r["size"] for r in records),
            "license": plan.license_family, "pulled_at": registry.now(),
        }
        if mmproj is not None:
            entry["mmproj"] = mmproj
        return Pulled(registry.put(entry), "pulled")


def _gguf_license(path: Path) -> str | None:
    from llamactl.errors import LlamactlError
    from llamactl.gguf_info import read_gguf

    try:
        return licenses.normalize(read_gguf(path).license)
    except LlamactlError:
        return None


def pull_safetensors(ref: ModelRef, *, quant: str = "Q4_K_M", revision: str | None = None,
                     accept_license: bool = False, confirm: Confirm | None = None,
                     progress: PullProgress | None = None,
                     keep_intermediate: bool = False) -> Pulled:
    """Download a safetensors checkpoint (verified, resumable, into the HF cache), convert it
    to GGUF, quantize it to `quant`, register the result as MODEL:QUANT in llamactl's models
    folder. The full-precision intermediate is deleted unless `keep_intermediate` (then it
    is registered too, as MODEL:F16/BF16/F32)."""
    import os

    from llamactl.convert import convert_checkpoint
    from llamactl.hub.cache import snapshot_folder
    from llamactl.hub.download import download
    from llamactl.quantize import FLOAT_TYPES, normalize_type, quantize_gguf

    progress = progress or PullProgress()
    qtype = normalize_type(quant)
    name = f"{_safetensors_model(ref)[1]}:{qtype.lower()}"
    with _opening(lambda models: models.get(name), lambda: plan_safetensors(ref, qtype, revision),
                  revision=revision, checked=False, accept_license=accept_license,
                  confirm=confirm, progress=progress) as (plan, existing):
        if existing is not None:
            return Pulled(existing, "present")
        assert plan is not None
        download(plan.repo, plan.commit, plan.files, revision=plan.requested_revision,
                 what=plan.name, progress=progress)
        src_dir = snapshot_folder(plan.repo, plan.commit)
        out_dir = paths.ensure(registry.model_folder(plan.model))
        stem = out_dir.name
        provenance = {"source": "converted", "repo": plan.repo, "revision": plan.commit,
                      "requested_revision": plan.requested_revision,
                      "license": plan.license_family, "converted_from": f"{plan.repo}@{plan.commit}"}
        final = out_dir / f"{stem}-{qtype}.gguf"
        intermediate = None
        # Llama 4 with a vision tower: its projector, converted once per model folder and
        # shared by the model's quants (kept in full precision: it is small)
        from llamactl.convert import projector_output

        mmproj = projector_output(src_dir, out_dir / f"{stem}.gguf")
        vision: dict[str, Any] = {}
        if mmproj is not None and not mmproj.exists():
            vision = {"mmproj": mmproj, "mmproj_optional": True}
        if qtype in FLOAT_TYPES:
            progress.step(f"converting {plan.repo} to {qtype}")
            convert_checkpoint(src_dir, final, outtype=qtype.lower(), progress=progress.convert, **vision)
        else:
            pending = out_dir / f"{stem}-full.gguf"
            progress.step(f"converting {plan.repo} to GGUF")
            result = convert_checkpoint(src_dir, pending, progress=progress.convert, **vision)
            intermediate = out_dir / f"{stem}-{result.outtype.upper()}.gguf"
            os.replace(pending, intermediate)
            progress.step(f"quantizing to {qtype}")
            try:
                quantize_gguf(intermediate, final, qtype)
            finally:
                if not keep_intermediate:
                    intermediate.unlink(missing_ok=True)
        if intermediate is not None and keep_intermediate:
            itag = intermediate.stem.rsplit("-", 1)[-1].lower()
            registry.put(registry.local_entry(f"{plan.model}:{itag}", plan.model, itag,
                                              intermediate, **provenance))
        entry = registry.local_entry(plan.name, plan.model, plan.tag, final, **provenance)
        if mmproj is not None and mmproj.is_file():
            from llamactl.fsutil import sha256_file

            entry["mmproj"] = {"filename": mmproj.name, "path": str(mmproj), "blob": None,
                               "size": mmproj.stat().st_size, "sha256": sha256_file(mmproj)}
        return Pulled(registry.put(entry), "pulled")


def pull(ref: str | ModelRef, *, source: str = "gguf", quant: str | None = None,
         revision: str | None = None, keep_intermediate: bool = False,
         accept_license: bool = False, confirm: Confirm | None = None,
         progress: PullProgress | None = None, projector: str | None = None) -> Pulled:
    """Pull a reference as typed (`llamactl pull`): source "gguf" (a published GGUF; the
    quant is the reference's tag) or "safetensors" (the checkpoint, converted here and
    quantized to `quant`, default the tag or Q4_K_M). The flag combination is checked
    before any request (UsageError, exit 2)."""
    from llamactl import refs

    source = source.lower()
    if source not in ("gguf", "safetensors"):
        raise UsageError(f"unknown --from {source!r}; choose gguf or safetensors")
    if source == "gguf" and (quant is not None or keep_intermediate):
        raise UsageError("--quant and --keep-intermediate go with --from safetensors",
                         hint="for a GGUF, name the quant as a tag: MODEL:q8_0")
    parsed = refs.parse(ref) if isinstance(ref, str) else ref
    if parsed.kind == "path":
        raise UsageError(f"{parsed.raw} is a local file; there is nothing to pull",
                         hint="use it directly (chat, show, bench accept a .gguf path)")
    if source == "gguf":
        return pull_gguf(parsed, revision=revision, accept_license=accept_license,
                         confirm=confirm, progress=progress, projector=projector)
    if projector is not None:
        raise UsageError("--mmproj goes with GGUF pulls; --from safetensors converts the projector itself")
    _safetensors_model(parsed)
    if parsed.tag and quant and parsed.tag.lower() != quant.lower():
        raise UsageError(f"two quants asked for: the tag {parsed.tag!r} and --quant {quant!r}")
    from llamactl.quantize import normalize_type

    qtype = normalize_type(quant or parsed.tag or "Q4_K_M")   # a bad type fails before any request
    return pull_safetensors(parsed, quant=qtype, revision=revision, accept_license=accept_license,
                            confirm=confirm, progress=progress, keep_intermediate=keep_intermediate)
