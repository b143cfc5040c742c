"""The draft model of speculative decoding, outside the decode loop: which model (`--draft
auto` through the catalog's pairs), whether it may draft for a target (the vocabulary
check), and its memory plan beside the target's (`plan_with_draft`, on llamactl.offload).

The decode loop itself is in the engine (draft attached to the target engine); the math of
accepting and replacing tokens is in llamactl.speculative. Nothing here prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import UsageError

DEFAULT_DRAFT_MAX = 8        # tokens proposed per round unless --draft-max says otherwise
DRAFT_MAX_LIMIT = 64


def check_draft_max(n: int) -> int:
    if n < 1 or n > DRAFT_MAX_LIMIT:
        raise UsageError(f"--draft-max must be between 1 and {DRAFT_MAX_LIMIT}, not {n}")
    return n


def resolve_reference(target_ref: str, draft_ref: str) -> str:
    """The reference of the draft to use: `draft_ref` itself, or for "auto" the catalog's
    pair of the target (UsageError, exit 2, saying why when there is none)."""
    if draft_ref.strip().lower() != "auto":
        return draft_ref
    from llamactl import catalog, refs

    try:
        parsed = refs.parse(target_ref)
    except Exception:
        parsed = None
    if parsed is None or parsed.kind != "catalog" or parsed.entry is None:
        raise UsageError(f"--draft auto knows the catalog's models only, and {target_ref!r} is not one",
                         hint="give --draft MODEL (for Llama 3.x: llama3.2-1b)")
    return catalog.draft_for(parsed.entry).name


# ---------------------------------------------------------------------------------------
# Vocabulary


def _sample_ids(n_vocab: int, k: int = 512) -> list[int]:
    """Evenly spread ids, the first and last 256 (special tokens live at either end), and
    a fixed pseudo-random set: the same list for the same vocabulary size."""
    import random

    ids = set(range(min(256, n_vocab)))
    ids |= set(range(max(0, n_vocab - 256), n_vocab))
    step = max(1, n_vocab // k)
    ids |= set(range(0, n_vocab, step))
    ids |= set(random.Random(n_vocab).sample(range(n_vocab), min(k, n_vocab)))
    return sorted(ids)


def vocabulary_mismatch(target_n_vocab: int, target_text: Callable[[int], bytes],
                        target_specials: dict[str, int],
                        draft_n_vocab: int, draft_text: Callable[[int], bytes],
                        draft_specials: dict[str, int]) -> str | None:
    """Why a draft cannot draft for a target (None when it can): the vocabulary size, the
    special tokens (bos, eos, end of turn ...: the same ids with the same text), and the
    text of a sample of the other tokens. `*_text(id)` is a token's bytes with special
    tokens as their text."""
    if target_n_vocab != draft_n_vocab:
        return f"{target_n_vocab} tokens against {draft_n_vocab}"
    for name in sorted(set(target_specials) | set(draft_specials)):
        a, b = target_specials.get(name, -1), draft_specials.get(name, -1)
        if a != b:
            return f"the {name} token is {a} against {b}"
    for i in _sample_ids(target_n_vocab):
        a, b = target_text(i), draft_text(i)
        if a != b:
            return f"token {i} is {a!r} against {b!r}"
    return None


SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                "eot": "tokenizer.ggml.eot_token_id", "pad": "tokenizer.ggml.padding_token_id"}


def header_mismatch(target: Any, draft: Any) -> str | None:
    """What the GGUF headers alone show (llamactl.gguf_info.GGUFInfo of each; before
    anything loads): the vocabulary size and the special token ids both declare. The
    loaded models get the whole check (`vocabulary_mismatch`)."""
    if target.vocab_size and draft.vocab_size and target.vocab_size != draft.vocab_size:
        return f"{target.vocab_size} tokens against {draft.vocab_size}"
    for name, key in SPECIAL_KEYS.items():
        a, b = target.metadata.get(key), draft.metadata.get(key)
        if isinstance(a, int) and isinstance(b, int) and a != b:
            return f"the {name} token is {a} against {b}"
    return None


def mismatch_error(why: str, *, target_name: str, draft_name: str) -> UsageError:
    """The one message for a draft that cannot draft for a target (exit 2)."""
    return UsageError(f"the draft {draft_name} does not share the vocabulary of {target_name} ({why})",
                      hint="a draft must come from the same family (Llama 3.2 1B drafts for Llama 3.x)")


# ---------------------------------------------------------------------------------------
# Planning a model and its draft together (llamactl.offload plans each)


@dataclass
class DraftPlan:
    """A target and its draft planned together: the draft goes first, wholly on the GPU
    when it fits there beside the target's smallest plan, else on the CPU; the target is
    planned in what the draft leaves."""

    target: Any            # llamactl.offload.Plan
    draft: Any
    draft_on: str          # "gpu" | "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {**self.target.to_dict(), "draft": {**self.draft.to_dict(), "placement": self.draft_on}}


def plan_with_draft(target_path: Path | str, draft_path: Path | str, spec: Any = None, *,
                    vram: int | None = None, ram: int | None = None, devices: Any = None,
                    mmproj: Path | str | None = None, target_name: str | None = None,
                    draft_name: str | None = None) -> "DraftPlan":
    """Plan `target_path` as `spec` says together with the draft at `draft_path` (loaded at
    the target's context: LoadSpec.for_draft). Raises DoesNotFit (the target's) when the
    two do not fit even with the draft on the CPU, UsageError (naming both) when their
    headers already show different vocabularies (llamactl.draft.header_mismatch)."""
    from dataclasses import replace as dc_replace

    from llamactl.errors import LlamactlError
    from llamactl.gguf_info import read_gguf
    from llamactl.load import LoadSpec
    from llamactl.offload import DoesNotFit, plan, plan_for_model

    spec = spec or LoadSpec()
    if devices is None and (vram is None or ram is None):
        from llamactl import devices as devmod

        devices = devmod.detect(use_ggml=vram is None)
    alone = plan_for_model(target_path, spec, vram=vram, ram=ram, devices=devices, mmproj=mmproj)
    total_vram, total_ram, margin = alone.vram, alone.ram, alone.margin
    projector = None
    if mmproj is not None:
        from llamactl.engine.images import ProjectorInfo

        projector = ProjectorInfo.read(mmproj)
    target_info = read_gguf(target_path)
    try:
        draft_info = read_gguf(draft_path)
    except LlamactlError as exc:
        raise type(exc)(f"the draft model {Path(draft_path).name} cannot be used: {exc.message}",
                        hint=exc.hint) from exc
    why = header_mismatch(target_info, draft_info)
    if why is not None:
        raise mismatch_error(why, target_name=target_name or Path(target_path).name,
                             draft_name=draft_name or Path(draft_path).name)
    ctx_spec = spec if spec.ctx is not None or spec.ctx_max else spec.replace(ctx=alone.n_ctx)

    def target_in(vram_left: int, ram_left: int) -> Plan:
        result = plan(target_info, ctx_spec, vram=max(0, vram_left), ram=max(0, ram_left), devices=devices,
                      margin=min(margin, max(0, vram_left)) if vram_left > 0 else 0, projector=projector)
        result.mmproj = str(mmproj) if mmproj is not None else None
        return dc_replace(result, vram=total_vram, ram=total_ram, margin=margin,
                          gpus=alone.gpus, devices_source=alone.devices_source)

    attempts: list[tuple[str, int]] = [("gpu", -1)] if total_vram > 0 else []
    attempts.append(("cpu", 0))
    last_error: DoesNotFit | None = None
    for where, ngl in attempts:
        try:
            draft = plan(draft_info, spec.for_draft(alone.n_ctx, ngl), vram=total_vram if ngl else 0,
                         ram=total_ram, devices=devices, margin=margin if ngl else 0)
        except DoesNotFit as exc:
            last_error = exc
            continue
        if ngl and (draft.n_gpu_layers < draft.n_layers + 1
                    or draft.gpu.get("total", 0) > max(0, total_vram - margin)):
            continue                       # not wholly on the GPU: the CPU then
        # the CUDA context and workspace are the process's, counted once: in the target's
        # plan when it uses the GPU, else in the draft's
        overhead = draft.gpu.get("overhead", 0) if ngl else 0
        try:
            target = target_in(total_vram - (draft.gpu.get("total", 0) - overhead) if ngl else total_vram,
                               total_ram - draft.cpu.get("total", 0) if total_ram else 0)
        except DoesNotFit as exc:
            last_error = exc
            continue
        if overhead and target.gpu.get("overhead", 0):
            draft = dc_replace(draft, gpu={**draft.gpu, "overhead": 0,
                                           "total": draft.gpu.get("total", 0) - overhead})
        draft = dc_replace(draft, vram=total_vram, ram=total_ram, gpus=alone.gpus,
                           devices_source=alone.devices_source)
        return DraftPlan(target, draft, where)
    assert last_error is not None
    raise last_error
