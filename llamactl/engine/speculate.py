"""Speculative decoding inside the engine's one decode path: a draft model attached to the
target engine proposes tokens, the target checks them in one batch.

`Draft` is the attached draft (its own Engine, its draft length). `Speculator` runs the
rounds of one generation for `Engine.stream_tokens`:

1. the draft's KV cache is brought to the conversation so far (the longest common prefix is
   kept, the rest evaluated), then it proposes up to `draft_max` tokens, one decode each,
   each drawn from its processed distribution q (llamactl.speculative.processed with the
   target's sampling options);
2. the target evaluates [last token + drafted tokens] in ONE batch with logits for every
   position (bindings.eval_all_logits) and takes its processed distributions p;
3. llamactl.speculative.verify keeps a prefix of the drafted tokens and gives one more
   token (the residual's draw on a rejection, the bonus token when all are kept);
4. the rejected tokens are removed from both KV caches.

At temperature 0 p and q are the argmax after the repeat penalty (what the target's greedy
sampler picks), so the output is the target's own, token for token. The math is in
llamactl.speculative; the low-level calls are in llamactl.engine.bindings. The server can
run one `Speculator` per request on an engine that has a draft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from llamactl import speculative as sp
from llamactl.draft import DEFAULT_DRAFT_MAX, check_draft_max, mismatch_error, vocabulary_mismatch
from llamactl.engine import bindings

if TYPE_CHECKING:
    # "Engine" in the annotations below is llamactl.engine.core.Engine: not imported even
    # for type checking, because core imports this module (the layering test reads both)
    from llamactl.engine.types import Sampling

# the adaptive draft length stays within these bounds
ADAPTIVE_MIN = 2
ADAPTIVE_MAX = 16


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _positions(engine: "Engine") -> int:
    """The positions an engine can hold and record: its context, and no more than the
    Llama object's `input_ids` (sized by the context asked for, while llama.cpp pads the
    context itself to a multiple of 256)."""
    return min(int(engine.n_ctx), len(engine.llama.input_ids))


@dataclass
class Draft:
    """A draft model attached to a target engine. `draft_max`: tokens proposed per round,
    fixed, or (`adaptive`) where the adaptive length starts (llamactl.speculative.next_draft_max)."""

    engine: "Engine"
    name: str
    draft_max: int = DEFAULT_DRAFT_MAX
    adaptive: bool = True

    def close(self) -> None:
        self.engine.close()


def _specials(engine: "Engine") -> dict[str, int]:
    import llama_cpp

    vocab = engine._vocab
    out = {"bos": llama_cpp.llama_vocab_bos(vocab), "eos": llama_cpp.llama_vocab_eos(vocab),
           "eot": llama_cpp.llama_vocab_eot(vocab), "pad": llama_cpp.llama_vocab_pad(vocab)}
    return {k: int(v) for k, v in out.items()}


def check_vocabulary(target: "Engine", draft: "Engine", *, target_name: str, draft_name: str) -> None:
    """UsageError (exit 2) naming both models unless `draft` shares `target`'s vocabulary."""
    why = vocabulary_mismatch(
        int(target.llama.n_vocab()), lambda i: target.piece(i, special=True), _specials(target),
        int(draft.llama.n_vocab()), lambda i: draft.piece(i, special=True), _specials(draft))
    if why is not None:
        raise mismatch_error(why, target_name=target_name, draft_name=draft_name)


class Speculator:
    """The rounds of one generation on `target` with its attached `draft`. Not reusable
    across generations (its random stream and penalty history are this call's)."""

    def __init__(self, target: "Engine", draft: Draft, sampling: "Sampling", seed: int | None):
        import numpy as np

        self.target = target
        self.draft = draft
        self.transform = sp.Transform.of(sampling)
        self.rng = np.random.default_rng(seed)
        self.recent: list[int] = []       # tokens sampled in this call (the repeat penalty's view)
        self.draft_max = draft.draft_max
        self.proposed = 0
        self.accepted = 0
        self.evaluated = 0                # target positions evaluated (drafted ones included)

    def _pick(self, dist: sp.Dist) -> int:
        if self.transform.greedy:
            return int(dist.ids[0])
        return dist.sample(float(self.rng.random()))

    def first(self) -> int:
        """The first token, from the target's logits after the prompt (no draft: the first
        token costs what it costs without one)."""
        p = sp.processed(bindings.last_logits(self.target.llama), self.transform, self.recent)
        token = self._pick(p)
        self.recent.append(token)
        return token

    def _sync(self, engine: "Engine", tokens: list[int]) -> None:
        """Bring `engine`'s KV cache to `tokens`: keep the common prefix (at least one token
        short, so that the logits after the last one are fresh), evaluate the rest."""
        keep = min(_lcp(engine.context_tokens, tokens), len(tokens) - 1)
        keep = engine._truncate_cache(keep)
        todo = tokens[keep:]
        step = max(1, int(engine.llama.n_batch))
        for i in range(0, len(todo), step):
            engine.llama.eval(todo[i:i + step])
            engine.evaluated_total += len(todo[i:i + step])

    def round(self, history: list[int], budget: int) -> list[int]:
        """One round after `history` (the prompt and every token sampled so far; its last
        token is not yet evaluated by the target). `budget`: the most tokens the caller can
        still take. Returns the accepted drafted tokens and the target's next token."""
        target, draft = self.target.llama, self.draft.engine
        last = history[-1]
        # the target's cache: everything before the last token
        keep = self.target._truncate_cache(_lcp(self.target.context_tokens, history[:-1]))
        if keep < len(history) - 1:
            rest = history[keep:-1]
            for i in range(0, len(rest), max(1, int(target.n_batch))):
                target.eval(rest[i:i + int(target.n_batch)])
            self.target.evaluated_total += len(rest)
        n = min(self.draft_max, budget - 1, int(target.n_batch) - 1,
                _positions(self.target) - int(target.n_tokens) - 2,
                _positions(draft) - len(history) - 1)
        drafted: list[int] = []
        qs: list[sp.Dist] = []
        if n > 0:
            self._sync(draft, history)
            for i in range(n):
                q = sp.processed(bindings.last_logits(draft.llama), self.transform, self.recent + drafted)
                x = self._pick(q)
                drafted.append(x)
                qs.append(q)
                if i < n - 1:
                    draft.llama.eval([x])
                    draft.evaluated_total += 1
        rows = bindings.eval_all_logits(target, [last] + drafted)
        self.target.evaluated_total += len(drafted) + 1
        self.evaluated += len(drafted) + 1
        ps = [sp.processed(rows[i], self.transform, self.recent + drafted[:i]) for i in range(len(drafted) + 1)]
        uniforms = [0.0] * (len(drafted) + 1) if self.transform.greedy else self.rng.random(len(drafted) + 1).tolist()
        verdict = sp.verify(drafted, qs, ps, uniforms)
        # the rejected drafted tokens leave both caches
        kept = len(history) + verdict.accepted
        self.target._truncate_cache(kept)
        if draft.llama.n_tokens > kept:
            draft._truncate_cache(kept)
        if drafted:
            self.proposed += len(drafted)
            self.accepted += verdict.accepted
            if self.draft.adaptive:
                self.draft_max = sp.next_draft_max(self.draft_max, verdict.accepted, len(drafted),
                                                   lo=ADAPTIVE_MIN, hi=ADAPTIVE_MAX)
        self.recent += verdict.tokens
        return verdict.tokens

    def settle(self, history: list[int]) -> None:
        """After the generation stopped (perhaps in the middle of a round's tokens): both
        caches keep only what is part of `history`, so the next call's prefix reuse sees
        the conversation as it is."""
        for engine in (self.target, self.draft.engine):
            if engine.llama is None:
                continue
            keep = _lcp(engine.context_tokens, history)
            if keep < int(engine.llama.n_tokens):
                engine._truncate_cache(keep)


def attach(target: "Engine", draft_engine: "Engine", *, draft_max: int | None = None,
           target_name: str | None = None, draft_name: str | None = None) -> Draft:
    """Check the vocabulary and build the Draft (`draft_max` None: adaptive, from
    DEFAULT_DRAFT_MAX)."""
    target_name = target_name or target.model_path.name
    draft_name = draft_name or draft_engine.model_path.name
    check_vocabulary(target, draft_engine, target_name=target_name, draft_name=draft_name)
    if draft_max is not None:
        return Draft(draft_engine, draft_name, check_draft_max(int(draft_max)), adaptive=False)
    return Draft(draft_engine, draft_name, DEFAULT_DRAFT_MAX, adaptive=True)


def usable(target: "Engine", sampling: "Sampling", n_image: int) -> bool:
    """Whether this generation drafts: not under a grammar (the draft's proposals would need
    the grammar's state per position; llamactl does not draft then) nor with images in the
    prompt (the draft cannot see them)."""
    return target.draft is not None and not sampling.grammar and not n_image


def options_for_draft(target_options: Any, n_ctx: int) -> Any:
    """The draft's EngineOptions: the target's (llamactl.load.LoadSpec.for_draft) at the
    target's context, with no projector and no chat format of its own."""
    from dataclasses import replace

    return replace(target_options, load=target_options.load.for_draft(n_ctx), mmproj=None, chat_format=None)

