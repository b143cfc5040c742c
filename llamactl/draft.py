"""The draft model of speculative decoding, outside the decode loop: which model (`--draft
auto` through the catalog's pairs) and whether it may draft for a target (the vocabulary
check).

The decode loop itself is in the engine (draft attached to the target engine); the math of
accepting and replacing tokens is in llamactl.speculative. Nothing here prints."""

from __future__ import annotations

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
