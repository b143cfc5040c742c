"""The one adapter for what the engine needs from llama-cpp-python below its public
`Llama` API: removing a suffix of the KV cache (`Llama._ctx.kv_cache_seq_rm`), setting the
count of evaluated tokens to match (`Llama.n_tokens`), recording positions decoded outside
`Llama.eval` (image embeddings: `input_ids`, `scores`, `_logits_all`), the sampler chain
(`llama_cpp._internals.LlamaSampler`, sampling from `Llama._ctx`), and llama.cpp's log
callback (public, but process-wide).

These internals were written against llama-cpp-python 0.3.36 and are not promised to stay;
`check()` refuses any version outside [0.3.36, 0.4) with one message (as `llamactl.overrides`
does for its ctypes layout), and checks that the attributes are where this module expects
them, so a changed binding fails at load with a message rather than mid-generation."""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import TYPE_CHECKING, Any

from llamactl.errors import LlamactlError

if TYPE_CHECKING:
    from llamactl.engine.types import Sampling

WRITTEN_FOR = "0.3.36"
SUPPORTED = ((0, 3, 36), (0, 4, 0))  # [min, max)
REINSTALL = 'pip install "llama-cpp-python>=0.3.36,<0.4"'


class BindingsError(LlamactlError):
    """llama-cpp-python is not the version (or shape) this adapter was written for."""


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_version(feature: str) -> None:
    """Raise BindingsError unless llama-cpp-python is in SUPPORTED; `feature` names what
    needs it ("the engine", "MoE expert offload")."""
    import llama_cpp

    version = getattr(llama_cpp, "__version__", "unknown")
    if not (SUPPORTED[0] <= version_tuple(version) < SUPPORTED[1]):
        raise BindingsError(
            f"{feature} was written for llama-cpp-python {WRITTEN_FOR} (>=0.3.36,<0.4); this is {version}",
            hint=f"install a supported version: {REINSTALL}")


_CHECKED = {"ok": False}


def check() -> None:
    """The version range, and the private names the engine uses (once per process)."""
    if _CHECKED["ok"]:
        return
    check_version("llamactl's engine")
    from llama_cpp import _internals

    missing = [name for owner, name in ((_internals.LlamaContext, "kv_cache_seq_rm"),
                                        (_internals.LlamaContext, "kv_cache_clear"),
                                        (_internals, "LlamaSampler"))
               if not hasattr(owner, name)]
    if missing:
        raise BindingsError(f"llama-cpp-python lacks {', '.join(missing)}, which the engine uses",
                            hint=f"install a supported version: {REINSTALL}")
    _CHECKED["ok"] = True


def truncate_cache(llama: Any, keep: int, *, chunk: int = 0) -> int:
    """Keep the first `keep` tokens of `llama`'s KV cache (all of it when it is shorter);
    clear it when llama.cpp cannot remove the suffix. Returns the tokens kept.

    `chunk` > 0: the model's chunked-attention layers use llama.cpp's chunked cache (swa_full
    off), which holds only the newest 8192 + n_ubatch positions. A token at position p on
    those layers attends to its own chunk, [p // chunk * chunk, p]; so keeping `keep`
    tokens is exact only while the window still holds the chunk's start. Otherwise keep the
    tokens up to that chunk's start (the next token starts a chunk and needs nothing older
    from the window). llama.cpp does not check this itself: `llama_memory_seq_rm` returns
    true and the next decode silently attends to a partial chunk (measured: logits off by
    0.2-2.9 on a tiny Llama 4; tests/test_longctx_cache.py)."""
    if keep < llama.n_tokens and chunk > 0:
        start = keep // chunk * chunk
        if keep > start and oldest_cached_position(llama) > start:
            keep = start
    if keep < llama.n_tokens:
        if keep == 0 or not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            llama._ctx.kv_cache_clear()
            keep = 0
    llama.n_tokens = min(keep, llama.n_tokens)
    return int(llama.n_tokens)


def oldest_cached_position(llama: Any) -> int:
    """The oldest position the KV cache still holds for sequence 0 (for a model with a
    chunked or sliding-window cache, that cache's; -1 when empty). Public C API."""
    import llama_cpp

    return int(llama_cpp.llama_memory_seq_pos_min(llama_cpp.llama_get_memory(llama._ctx.ctx), 0))


def sampler_chain(sampling: "Sampling", *, n_vocab: int, seed: int | None, vocab: Any = None,
                  banned: list[int] | tuple[int, ...] = ()) -> Any:
    """llama.cpp's sampler chain for `sampling`: its grammar first (GBNF, with `vocab` the
    model's llama_vocab pointer) and the `banned` tokens never sampled, then repetition
    penalty, then greedy, or top-k, top-p, min-p, temperature and a seeded draw (`seed`
    None: llama.cpp's random seed)."""
    import llama_cpp
    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    if sampling.grammar:
        # first in the chain: the other samplers only ever see tokens the grammar allows
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, sampling.grammar.encode("utf-8"), b"root")
        if not grammar:
            raise LlamactlError("llama.cpp refused the grammar")
        llama_cpp.llama_sampler_chain_add(sampler.sampler, grammar)
        if banned:
            sampler.add_logit_bias(n_vocab, {t: float("-inf") for t in banned})
    seed = llama_cpp.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
    if sampling.repeat_penalty and sampling.repeat_penalty != 1.0:
        sampler.add_penalties(n_vocab=n_vocab, penalty_last_n=64,
                              penalty_repeat=sampling.repeat_penalty,
                              penalty_freq=0.0, penalty_present=0.0)
    if sampling.temperature <= 0:
        sampler.add_greedy()
    else:
        if sampling.top_k and sampling.top_k > 0:
            sampler.add_top_k(int(sampling.top_k))
        if sampling.top_p is not None and sampling.top_p < 1.0:
            sampler.add_top_p(float(sampling.top_p), 1)
        if sampling.min_p and sampling.min_p > 0:
            sampler.add_min_p(float(sampling.min_p), 1)
        sampler.add_temp(float(sampling.temperature))
        sampler.add_dist(seed)
    return sampler


def sample(sampler: Any, llama: Any) -> int:
    """The next token from the logits of the last evaluated position."""
    return int(sampler.sample(llama._ctx, -1))


def eval_all_logits(llama: Any, tokens: list[int]):
    """Evaluate `tokens` after the `llama.n_tokens` already in the cache, in ONE llama_decode
    with an output row for every token (what speculative verification needs), and record
    them as `Llama.eval` does (`input_ids`, `n_tokens`; `scores` when `_logits_all`).
    Returns a copy of the logits, shape (len(tokens), n_vocab). At most `llama.n_batch`
    tokens (the size of `Llama._batch`)."""
    import numpy as np

    k = len(tokens)
    if not 0 < k <= int(llama.n_batch):
        raise LlamactlError(f"cannot evaluate {k} tokens in one batch of {int(llama.n_batch)}")
    n_past = int(llama.n_tokens)
    llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
    llama._batch.set_batch(batch=list(tokens), n_past=n_past, logits_all=True)
    llama._ctx.decode(llama._batch)
    n_vocab = int(llama.n_vocab())
    rows = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(k, n_vocab)).copy()
    llama.input_ids[n_past:n_past + k] = tokens
    if llama._logits_all:
        llama.scores[n_past:n_past + k, :] = rows
    llama.n_tokens = n_past + k
    return rows


def last_logits(llama: Any):
    """A copy of the logits of the last evaluated position (after `Llama.eval`)."""
    import numpy as np

    n_vocab = int(llama.n_vocab())
    return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()


# --- several sequences in one context (llamactl.engine.batch) -----------------------------
# Public C API of llama.cpp (llama_init_from_model, llama_batch_*, llama_memory_seq_*), with
# the loaded Llama's own context parameters (`Llama.context_params`) as the starting point.


def multi_sequence_context(llama: Any, *, n_ctx: int, n_seq_max: int, n_batch: int, n_ubatch: int) -> Any:
    """A second context on `llama`'s model: `n_seq_max` sequences sharing one KV cache of
    `n_ctx` cells (llama.cpp's unified KV cache), with the model's threads, KV type and
    flash attention. None when llama.cpp cannot create it. Free it with `free_context`."""
    import llama_cpp

    params = type(llama.context_params).from_buffer_copy(llama.context_params)
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = min(n_ubatch, n_batch)
    params.n_seq_max = n_seq_max
    params.kv_unified = True
    ctx = llama_cpp.llama_init_from_model(llama.model, params)
    return ctx or None


def free_context(ctx: Any) -> None:
    import llama_cpp

    llama_cpp.llama_free(ctx)


def sample_at(sampler: Any, ctx: Any, index: int) -> int:
    """The next token from the logits of batch position `index` in the raw context `ctx`."""
    import llama_cpp

    return int(llama_cpp.llama_sampler_sample(sampler.sampler, ctx, index))


def logits_at(ctx: Any, index: int, n_vocab: int) -> Any:
    """A copy (numpy float32) of the logits of batch position `index` in the raw context `ctx`."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()


_LLAMA_CLASS: dict[str, Any] = {}


def llama_class() -> Any:
    """`llama_cpp.Llama` without its chat templates: Llama.__init__ compiles a Jinja
    formatter for every `tokenizer.chat_template*` in the GGUF, which llamactl never uses
    (llamactl.engine.template renders them), and a template with a syntax error would fail
    the load itself, whatever --chat-format says. This subclass hides those keys from
    `metadata` while Llama initialises; `gguf_metadata` keeps every key."""
    if "cls" in _LLAMA_CLASS:
        return _LLAMA_CLASS["cls"]
    import llama_cpp

    class EngineLlama(llama_cpp.Llama):  # type: ignore[misc,valid-type]
        @property
        def metadata(self) -> dict[str, str]:
            return self.__dict__["_llamactl_metadata"]

        @metadata.setter
        def metadata(self, value: dict[str, str]) -> None:
            self.__dict__["gguf_metadata"] = dict(value)
            self.__dict__["_llamactl_metadata"] = {
                k: v for k, v in value.items() if not k.startswith("tokenizer.chat_template")}

    _LLAMA_CLASS["cls"] = EngineLlama
    return EngineLlama


def record_evaluated(llama: Any, n_past: int, ids: list[int]) -> None:
    """After a `llama_decode` of rows at positions n_past.. that did not go through
    `Llama.eval` (image embeddings): what `Llama.eval` records (0.3.36), the ids standing for
    the positions (`input_ids`), their logits when the context keeps all logits (`scores`,
    `_logits_all`), and the new count of evaluated tokens (`n_tokens`)."""
    import llama_cpp
    import numpy as np

    k = len(ids)
    llama.input_ids[n_past:n_past + k] = ids
    if llama._logits_all:
        n_vocab = int(llama.n_vocab())
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llama.ctx), shape=(k * n_vocab,))
        llama.scores[n_past:n_past + k, :].reshape(-1)[::] = logits
    llama.n_tokens = n_past + k


def logits_all(llama: Any) -> bool:
    """Whether `llama` keeps the logits of every position (`Llama._logits_all`)."""
    return bool(llama._logits_all)


# --- llama.cpp's log --------------------------------------------------------------------

_LOG: dict[str, Any] = {"verbose": False, "callback": None}


def set_llama_log(verbose: bool) -> None:
    """Route llama.cpp's (and ggml's) log: dropped, or to stderr when `verbose`. Its log
    never reaches stdout."""
    import llama_cpp

    _LOG["verbose"] = verbose
    if _LOG["callback"] is None:
        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - C calls it
            if _LOG["verbose"] and text:
                try:
                    sys.stderr.write(text.decode("utf-8", "replace"))
                    sys.stderr.flush()
                except Exception:
                    pass

        _LOG["callback"] = _callback  # keep it alive as long as the process
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    # the bindings' Python logger (used by some of their own messages)
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def route_mtmd_log() -> None:
    """Send mtmd's log (the image encoder's) through the same callback as llama.cpp's."""
    from llama_cpp import mtmd_cpp

    if _LOG["callback"] is None:
        set_llama_log(_LOG["verbose"])
    if not _LOG.get("mtmd"):
        mtmd_cpp.mtmd_helper_log_set(_LOG["callback"], ctypes.c_void_p(0))
        _LOG["mtmd"] = True
