"""Multi-sequence batched decoding: several requests decode together in one llama.cpp context.

The engine's single-conversation path (`Engine.stream_tokens`) evaluates one sequence. A
`BatchDecoder` holds `n_slots` sequences in one context whose KV cache is shared among them
(llama.cpp's unified KV cache, `n_seq_max` = slots): every `step()` builds ONE `llama_batch`
with the next token of every generating slot and a chunk of the prompt of every slot still
reading one, calls `llama_decode` once, and samples one token per slot that asked for logits.

It reuses the engine for everything that is not the batching itself: tokenization and token
text (`Engine.piece`), the stop-token rule (`Engine.is_stop`), the sampler chain
(`Engine.sampler`, grammar included), prompt building against what a slot already holds
(`Engine.build_prompt_tokens`) and the `Stats` type. The context itself comes from
`bindings.multi_sequence_context` (llama.cpp's C API, behind the bindings adapter).

Each slot keeps the KV cache of its last request: `choose_slot` picks the idle slot whose
tokens share the longest prefix with a new prompt, and only the rest is evaluated. Not
thread-safe: one thread (the server's scheduler) calls every method.
"""

from __future__ import annotations

import codecs
import ctypes
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from llamactl.engine import bindings
from llamactl.engine.core import _lcp
from llamactl.engine.types import Piece, Sampling, Stats
from llamactl.errors import InsufficientResources, LlamactlError


@dataclass
class Job:
    """One generation request. `emit` receives each Piece, then one Stats (last), or an
    exception; it is called on the decoding thread and must not block."""

    prompt: list[int]                         # the prompt's tokens, plainly tokenized
    sampling: Sampling
    emit: Callable[[Any], None]
    text: str | None = None                   # the rendered chat prompt: rebuilt against the slot's tokens
    stop: list[str] = field(default_factory=list)   # stop strings (not part of the output)
    special_text: bool = False                # special tokens as their text (tool-call tags)
    ignore_eos: bool = False                  # end-of-turn tokens do not end it (benchmarks)
    cancelled: bool = False                   # set by any thread: stop at the next step
    # filled in while it runs
    slot: int = -1
    started: float = 0.0


class StopText:
    """Holds back generated text that could be the start of a stop string; finds the stop."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Add `text`; return what can be shown now."""
        if not self.stops:
            return text
        self.pending += text
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.hit = True
                out, self.pending = self.pending[:at], ""
                return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)       # what the KV cache holds for this sequence
    flags: list[bool] = field(default_factory=list)       # per token: shown in its special form
    last: int | None = None                               # the token sampled last (not yet in the cache)
    last_flag: bool = False                               # it ended the turn (shown in special form)
    job: Job | None = None
    todo: list[int] = field(default_factory=list)         # prompt tokens still to evaluate
    todo_flags: list[bool] = field(default_factory=list)
    sampler: Any = None
    decoder: Any = None
    stop: StopText | None = None
    n_prompt: int = 0
    n_image: int = 0                                      # of n_prompt, image positions
    evaluated: int = 0
    generated: int = 0
    t_prompt: float | None = None
    t_first: float | None = None
    used_at: float = 0.0
    # speculative decoding (a draft model attached to the decoder)
    dtokens: list[int] = field(default_factory=list)      # what the draft's KV cache holds for this sequence
    gen_ids: list[int] = field(default_factory=list)      # this job's generated tokens (the repeat penalty's window)
    rng: Any = None
    dmax: int = 0                                         # tokens to propose next round (adaptive)
    drafted: int = 0
    accepted: int = 0


def _keep_prefix(mem: Any, seq: int, cached: list[int], tokens: list[int]) -> int:
    """How much of sequence `seq`'s cache (holding `cached`) `tokens` keep: their common
    prefix, leaving at least one token to evaluate; the rest leaves the cache. Where
    llama.cpp cannot cut the sequence there, all of it goes and 0 is returned."""
    import llama_cpp

    keep = min(_lcp(cached, tokens), len(tokens) - 1)
    if keep < len(cached) and not llama_cpp.llama_memory_seq_rm(mem, seq, keep, -1):
        llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
        keep = 0
    return keep


class BatchDecoder:
    """`n_slots` sequences of at most `slot_ctx` tokens each, decoded together."""

    def __init__(self, engine: Any, n_slots: int, slot_ctx: int, n_batch: int = 512, n_ubatch: int = 512,
                 draft: Any = None, draft_max: int = 8, adaptive: bool = True):
        import llama_cpp

        if n_slots < 1:
            raise LlamactlError("at least one slot is needed")
        self.engine = engine
        self.n_slots = n_slots
        self.slot_ctx = slot_ctx
        self.n_batch = n_batch
        self._ctx = bindings.multi_sequence_context(engine.llama, n_ctx=n_slots * slot_ctx,
                                                    n_seq_max=n_slots, n_batch=n_batch, n_ubatch=n_ubatch)
        if self._ctx is None:
            raise InsufficientResources(
                f"llama.cpp could not create a context of {n_slots} x {slot_ctx} tokens",
                hint="use fewer --parallel slots or a smaller --ctx")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.slots = [_Slot(seq=i) for i in range(n_slots)]
        self.tokens_decoded = 0                 # tokens evaluated in all, for tests and bench
        # A draft model (an Engine sharing the vocabulary): every generating slot without a
        # grammar gets up to `draft_max` proposed tokens per step, verified in the one batch.
        self.draft = draft
        self.draft_max = draft_max
        self.adaptive = adaptive
        self._dctx = None
        if draft is not None:
            self._n_vocab = int(engine.llama.n_vocab())
            self._dctx = bindings.multi_sequence_context(draft.llama, n_ctx=n_slots * slot_ctx, n_seq_max=n_slots,
                                                         n_batch=n_batch, n_ubatch=n_ubatch)
            if self._dctx is None:
                self.close()
                raise InsufficientResources(
                    f"llama.cpp could not create the draft model's context of {n_slots} x {slot_ctx} tokens",
                    hint="use fewer --parallel slots, a smaller --ctx, or no --draft")
            self._dmem = llama_cpp.llama_get_memory(self._dctx)
            self._dbatch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    # -- slots ----------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    @property
    def idle(self) -> int:
        return self.n_slots - self.busy

    def choose_slot(self, prompt: list[int]) -> int | None:
        """The idle slot whose cached tokens share the longest prefix with `prompt`
        (ties: the one used least recently); None when every slot is busy."""
        best, best_key = None, None
        for i, slot in enumerate(self.slots):
            if slot.job is not None:
                continue
            key = (_lcp(slot.tokens, prompt), -slot.used_at)
            if best_key is None or key > best_key:
                best, best_key = i, key
        return best

    def start(self, index: int, job: Job) -> None:
        """Run `job` in slot `index`: keep the common prefix of its cache, queue the rest."""
        import llama_cpp

        slot = self.slots[index]
        assert slot.job is None
        engine = self.engine
        if job.text is not None and slot.tokens:
            history = slot.tokens + ([slot.last] if slot.last is not None else [])
            prompt, flags = engine.build_prompt_tokens(
                job.text, history, slot.flags + ([slot.last_flag] if slot.last is not None else []))
        else:
            prompt, flags = list(job.prompt), [True] * len(job.prompt)
        if not prompt:
            raise LlamactlError("empty prompt")
        n_image = 0
        if engine.images is not None:     # whole images (virtual ids) -> their layouts
            prompt, flags, n_image = engine.images.expand_flags(prompt, flags)
        if len(prompt) >= self.slot_ctx:
            raise LlamactlError(f"the prompt is {len(prompt)} tokens; a slot's context is {self.slot_ctx} tokens")
        keep = _keep_prefix(self._mem, slot.seq, slot.tokens, prompt)
        slot.tokens = slot.tokens[:keep]
        slot.flags = flags[:keep]
        slot.todo = prompt[keep:]
        slot.todo_flags = flags[keep:]
        slot.last = None
        slot.job = job
        job.slot = index
        job.started = job.started or time.perf_counter()
        slot.sampler = engine.sampler(job.sampling)
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stop = StopText(job.stop)
        slot.n_prompt = len(prompt)
        slot.n_image = n_image
        slot.evaluated = 0
        slot.generated = 0
        slot.t_prompt = None
        slot.t_first = None
        slot.gen_ids = []
        slot.drafted = slot.accepted = 0
        slot.dmax = self.draft_max
        if self.draft is not None:
            import numpy as np

            seed = job.sampling.seed if job.sampling.seed is not None else engine.options.seed
            slot.rng = np.random.default_rng(seed)

    def _finish(self, slot: _Slot, reason: str) -> None:
        job = slot.job
        assert job is not None
        if slot.decoder is not None and slot.stop is not None and not slot.stop.hit:
            tail = slot.stop.feed(slot.decoder.decode(b"", final=True)) + slot.stop.flush()
            if tail:
                job.emit(Piece(tail, -1))
        end = time.perf_counter()
        t_prompt = (slot.t_prompt or end) - job.started
        gen_seconds = end - (slot.t_prompt or end)
        job.emit(Stats(
            prompt_tokens=slot.n_prompt, prompt_tokens_evaluated=slot.evaluated,
            completion_tokens=slot.generated, prompt_seconds=t_prompt,
            generation_seconds=gen_seconds,
            ttft_seconds=(slot.t_first - job.started) if slot.t_first else t_prompt,
            prompt_tps=slot.evaluated / t_prompt if t_prompt > 0 else 0.0,
            generation_tps=slot.generated / gen_seconds if gen_seconds > 0 and slot.generated else 0.0,
            finish_reason=reason, context_tokens=len(slot.tokens), prompt_image_tokens=slot.n_image,
            draft_tokens=slot.drafted, draft_accepted_tokens=slot.accepted,
        ))
        slot.job = None
        slot.sampler = None
        slot.todo = []
        slot.used_at = end

    def cancel_finished(self) -> None:
        """End the jobs whose `cancelled` flag is set (their slots become idle)."""
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "interrupted")

    # -- one step -------------------------------------------------------------------------

    def step(self) -> bool:
        """One llama_decode over every busy slot; False when no slot is busy."""
        import llama_cpp

        self.cancel_finished()
        batch = self._batch
        n = 0
        wants: list[tuple[_Slot, int]] = []      # (slot, index of its logits in the batch)

        def add(token: int, pos: int, seq: int, logits: bool) -> int:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = 1 if logits else 0
            n += 1
            return n - 1

        # the next token of every generating slot first (with what the draft proposes for
        # it), then prompt chunks in the room left
        proposals = self._propose() if self._dctx is not None else {}
        checks: list[tuple[_Slot, list[int], list[int], list[Any]]] = []   # (slot, indices, drafted, q)
        for slot in self.slots:
            if slot.job is not None and not slot.todo and slot.last is not None:
                drafted, q = proposals.get(slot.seq, ([], []))
                base = len(slot.tokens)
                index = add(slot.last, base, slot.seq, True)
                slot.tokens.append(slot.last)
                slot.flags.append(False)
                slot.last = None
                if not drafted:
                    wants.append((slot, index))
                    continue
                indices = [index] + [add(t, base + 1 + j, slot.seq, True) for j, t in enumerate(drafted)]
                checks.append((slot, indices, drafted, q))
        for slot in self.slots:
            if slot.job is None or not slot.todo or n >= self.n_batch:
                continue
            if slot.todo[0] < 0:
                # image positions: their embeddings go in a decode of their own (a batch
                # holds tokens or embeddings, not both), then the slot goes on with tokens
                from llamactl.engine.images import decode_rows

                run = 0
                while run < len(slot.todo) and slot.todo[run] < 0 and run < self.n_batch:
                    run += 1
                rows = slot.todo[:run]
                decode_rows(self._ctx, self.engine.images.embeddings(rows), len(slot.tokens), slot.seq, self.n_batch)
                self.tokens_decoded += run
                slot.tokens.extend(rows)
                slot.flags.extend(slot.todo_flags[:run])
                slot.todo = slot.todo[run:]
                slot.todo_flags = slot.todo_flags[run:]
                slot.evaluated += run
                if not slot.todo or slot.todo[0] < 0:
                    continue
            take = slot.todo[: self.n_batch - n]
            first_image = next((j for j, t in enumerate(take) if t < 0), None)
            if first_image is not None:
                take = take[:first_image]        # the image goes in a decode of its own next step
            for j, token in enumerate(take):
                last = j == len(take) - 1 and len(take) == len(slot.todo)
                index = add(token, len(slot.tokens) + j, slot.seq, last)
                if last:
                    wants.append((slot, index))
            slot.tokens.extend(take)
            slot.flags.extend(slot.todo_flags[: len(take)])
            slot.todo = slot.todo[len(take):]
            slot.todo_flags = slot.todo_flags[len(take):]
            slot.evaluated += len(take)
        if n == 0:
            return False
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        self.tokens_decoded += n
        if rc != 0:
            error = LlamactlError(f"llama.cpp could not decode a batch of {n} tokens (code {rc})")
            for slot in self.slots:
                if slot.job is not None:
                    slot.job.emit(error)
                    llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                    slot.tokens, slot.flags, slot.job, slot.todo = [], [], None, []
            return True
        now = time.perf_counter()
        for slot, index in wants:
            if slot.t_prompt is None:
                slot.t_prompt = now
            self._take(slot, bindings.sample_at(slot.sampler, self._ctx, index))
        for slot, indices, drafted, q in checks:
            self._check(slot, indices, drafted, q)
        return True

    def _take(self, slot: _Slot, token: int) -> bool:
        """`token` comes next in `slot` (not yet in its KV cache): emit it, or end the job
        (end of turn, a stop string, the length limit, a full slot). True while it goes on."""
        job = slot.job
        assert job is not None
        engine = self.engine
        if not job.ignore_eos and engine.is_stop(token):
            slot.last, slot.last_flag = token, True
            self._finish(slot, "stop")
            return False
        slot.generated += 1
        slot.gen_ids.append(token)
        if slot.t_first is None:
            slot.t_first = time.perf_counter()
        text = slot.decoder.decode(engine.piece(token, special=job.special_text))
        shown = slot.stop.feed(text)
        if shown or not slot.stop.stops:
            job.emit(Piece(shown, token))
        slot.last, slot.last_flag = token, False
        if slot.stop.hit:
            self._finish(slot, "stop")
        elif job.sampling.max_tokens is not None and slot.generated >= job.sampling.max_tokens:
            self._finish(slot, "length")
        elif len(slot.tokens) + 1 >= self.slot_ctx:
            self._finish(slot, "length")
        else:
            return True
        return False

    # -- speculative decoding ---------------------------------------------------------------

    def _drafting(self, slot: _Slot) -> int:
        """How many tokens to propose for `slot` this step (0: none)."""
        job = slot.job
        if job is None or slot.todo or slot.last is None or job.sampling.grammar:
            return 0
        n = slot.dmax
        if job.sampling.max_tokens is not None:
            n = min(n, job.sampling.max_tokens - slot.generated - 1)
        return max(0, min(n, self.slot_ctx - len(slot.tokens) - 2))

    def _propose(self) -> dict[int, tuple[list[int], list[Any]]]:
        """The draft's tokens for every slot that drafts this step, and the distributions q
        they were drawn from: the draft's sequence is brought level with the slot's (its
        cached tokens + the last sampled), then one batched draft decode per proposed token."""
        import llama_cpp

        from llamactl.speculative import Transform, processed

        wanted = {s.seq: n for s in self.slots if (n := self._drafting(s)) > 0}
        if not wanted:
            return {}
        slots = [s for s in self.slots if s.seq in wanted]
        need: dict[int, list[int]] = {}
        for s in slots:
            seq_tokens = s.tokens + [s.last]
            keep = _keep_prefix(self._dmem, s.seq, s.dtokens, seq_tokens)
            s.dtokens = s.dtokens[:keep]
            need[s.seq] = seq_tokens[keep:]
        logits: dict[int, Any] = {}          # slot -> the draft's logits after its last token
        while any(need.values()):
            n = 0
            marked: list[tuple[int, int]] = []
            for s in slots:
                todo = need[s.seq]
                take = todo[: self.n_batch - n]
                for j, t in enumerate(take):
                    last = j == len(todo) - 1
                    self._dadd(n, t, len(s.dtokens) + j, s.seq, last)
                    if last:
                        marked.append((s.seq, n))
                    n += 1
                s.dtokens.extend(take)
                need[s.seq] = todo[len(take):]
                if n >= self.n_batch:
                    break
            self._ddecode(n)
            for seq, i in marked:
                logits[seq] = bindings.logits_at(self._dctx, i, self._n_vocab)
        out: dict[int, tuple[list[int], list[Any]]] = {s.seq: ([], []) for s in slots}
        live = list(slots)
        for _ in range(max(wanted.values())):
            n = 0
            going = []
            index: dict[int, int] = {}
            for s in live:
                transform = Transform.of(s.job.sampling)
                drafted, qs = out[s.seq]
                q = processed(logits[s.seq], transform, s.gen_ids + drafted)
                token = int(q.ids[0]) if transform.greedy else q.sample(float(s.rng.random()))
                drafted.append(token)
                qs.append(q)
                if len(drafted) < wanted[s.seq] and not self.engine.is_stop(token):
                    self._dadd(n, token, len(s.dtokens), s.seq, True)
                    index[s.seq] = n
                    s.dtokens.append(token)
                    n += 1
                    going.append(s)
            live = going
            if not live:
                break
            self._ddecode(n)
            for s in live:
                logits[s.seq] = bindings.logits_at(self._dctx, index[s.seq], self._n_vocab)
        return out

    def _dadd(self, n: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._dbatch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq
        batch.logits[n] = 1 if logits else 0

    def _ddecode(self, n: int) -> None:
        import llama_cpp

        self._dbatch.n_tokens = n
        rc = llama_cpp.llama_decode(self._dctx, self._dbatch)
        if rc != 0:
            raise LlamactlError(f"llama.cpp could not decode the draft model's batch of {n} tokens (code {rc})")

    def _check(self, slot: _Slot, indices: list[int], drafted: list[int], q: list[Any]) -> None:
        """Verify `drafted` against the target's logits at `indices` (the last sampled token,
        then each drafted one): keep the accepted prefix in the KV cache, drop the rest, and
        emit the accepted tokens and the one the verification chose."""
        import llama_cpp

        from llamactl.speculative import Transform, next_draft_max, processed, verify

        job = slot.job
        assert job is not None
        if slot.t_prompt is None:
            slot.t_prompt = time.perf_counter()
        transform = Transform.of(job.sampling)
        p = [processed(bindings.logits_at(self._ctx, index, self._n_vocab), transform, slot.gen_ids + drafted[:i])
             for i, index in enumerate(indices)]
        uniforms = [0.0] * (len(drafted) + 1) if transform.greedy else [float(u) for u in slot.rng.random(len(drafted) + 1)]
        verdict = verify(drafted, q, p, uniforms)
        slot.drafted += len(drafted)
        slot.accepted += verdict.accepted
        if self.adaptive:
            slot.dmax = next_draft_max(slot.dmax, verdict.accepted, len(drafted), hi=max(self.draft_max, 2))
        base = len(slot.tokens)                  # the KV cache holds slot.tokens + drafted
        for j, token in enumerate(verdict.tokens):
            if j > 0:                            # the previous token stays: it is in the cache
                slot.tokens.append(slot.last)
                slot.flags.append(False)
                slot.last = None
            if not self._take(slot, token):
                break
        kept = len(slot.tokens)
        if kept < base + len(drafted):
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq, kept, -1)

    def close(self) -> None:
        import llama_cpp

        if getattr(self, "_dctx", None):
            llama_cpp.llama_batch_free(self._dbatch)
            bindings.free_context(self._dctx)
            self._dctx = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_batch_free(self._batch)
            bindings.free_context(self._ctx)
            self._ctx = None
