"""Speculative sampling as pure functions over logits: no llama.cpp, no state.

A small draft model proposes tokens; the target checks them all in one batch. What makes
the output the target's own (Leviathan et al. 2023, Chen et al. 2023):

- the target's and the draft's logits go through the SAME transform, the one the engine's
  sampler chain applies to the target alone (repeat penalty, top-k, top-p, min-p,
  temperature, in llama.cpp's order: `processed`);
- the draft samples its token x from its processed distribution q;
- the target accepts x with probability min(1, p(x)/q(x)), p its processed distribution at
  that position;
- on the first rejection the token is drawn from max(0, p - q), normalised (`residual`), and
  the round ends; when every drafted token is accepted, one more token comes from the
  target's distribution after the last one (the "bonus" token).

At temperature 0 both distributions are one-hot (the argmax after the repeat penalty), so a
drafted token is accepted exactly when it is the target's argmax and a rejection yields the
target's argmax: the output is the target's greedy output, token for token.

Distributions are sparse: `Dist(ids, probs)` holds the kept tokens only (top-k 40 keeps 40),
so verification costs microseconds even for a 202k vocabulary. numpy is imported by the
functions that need it (callers are the engine and tests, never the CLI's start-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

# llama.cpp's penalties sampler in the engine's chain looks at the last 64 tokens.
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class Transform:
    """The sampling options that shape a distribution (the engine's `Sampling` minus the
    seed and the length). `temperature <= 0` is greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    penalty_last_n: int = PENALTY_LAST_N

    @classmethod
    def of(cls, sampling: Any) -> "Transform":
        """From anything with the engine's Sampling fields."""
        return cls(temperature=float(sampling.temperature), top_k=int(sampling.top_k or 0),
                   top_p=1.0 if sampling.top_p is None else float(sampling.top_p),
                   min_p=float(sampling.min_p or 0.0),
                   repeat_penalty=float(sampling.repeat_penalty or 1.0))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Dist:
    """A sparse probability distribution: `ids` (int64) with `probs` (float64, sum 1),
    most likely first."""

    ids: Any
    probs: Any

    def prob(self, token: int) -> float:
        hit = self.ids == token
        return float(self.probs[hit][0]) if hit.any() else 0.0

    def sample(self, u: float) -> int:
        """The token at `u` in [0, 1) of the cumulative distribution."""
        import numpy as np

        cum = np.cumsum(self.probs)
        i = int(np.searchsorted(cum, u * cum[-1], side="right"))
        return int(self.ids[min(i, len(self.ids) - 1)])

    def dense(self, n_vocab: int):
        import numpy as np

        out = np.zeros(n_vocab)
        out[self.ids] = self.probs
        return out


def penalize(logits, recent: Sequence[int], penalty: float, last_n: int = PENALTY_LAST_N):
    """llama.cpp's repeat penalty: every distinct token among the last `last_n` of `recent`
    has its logit divided by `penalty` when positive, multiplied when not. A copy."""
    import numpy as np

    out = np.array(logits, dtype=np.float64, copy=True)
    if penalty == 1.0 or not recent or last_n == 0:
        return out
    seen = np.unique(np.asarray(list(recent)[-last_n:], dtype=np.int64))
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def processed(logits, transform: Transform, recent: Sequence[int] = ()) -> Dist:
    """The distribution the engine samples from, given one position's raw logits: repeat
    penalty, then (greedy: the argmax, first on a tie, as llama.cpp's greedy sampler) top-k,
    top-p (on the softmax of what top-k kept, at temperature 1: the smallest prefix whose
    mass reaches top_p), min-p (logit >= max + log(min_p)), temperature, softmax."""
    import numpy as np

    x = penalize(logits, recent, transform.repeat_penalty, transform.penalty_last_n)
    if transform.greedy:
        return Dist(np.array([int(np.argmax(x))], dtype=np.int64), np.array([1.0]))
    n = x.shape[0]
    k = int(transform.top_k) if transform.top_k and transform.top_k > 0 else n
    k = min(k, n)
    # Top-p and min-p each keep a prefix of the sorted candidates, and the maximum is the same
    # for both, so min-p may cut first (cheap on a full vocabulary) as long as top-p's
    # softmax is normalised over what top-k kept.
    if k < n:
        cand = np.argpartition(-x, k - 1)[:k]
    else:
        cand = np.arange(n)
    lc = x[cand]
    top = float(lc.max())
    norm = np.exp(lc - top).sum()
    if transform.min_p and transform.min_p > 0:
        keep = lc >= top + np.log(transform.min_p)
        cand, lc = cand[keep], lc[keep]
    order = np.lexsort((cand, -lc))          # most likely first; ties by id, as a stable sort
    cand, lc = cand[order], lc[order]
    if transform.top_p is not None and transform.top_p < 1.0:
        cum = np.cumsum(np.exp(lc - top) / norm)
        last = int(np.searchsorted(cum, transform.top_p, side="left"))
        cand, lc = cand[: last + 1], lc[: last + 1]
    z = lc / float(transform.temperature)
    p = np.exp(z - z.max())
    return Dist(cand.astype(np.int64), p / p.sum())


def residual(p: Dist, q: Dist) -> Dist:
    """max(0, p - q) normalised: where a rejected token's replacement comes from. (When p
    and q are equal nothing is left; then p itself, which a rejection cannot reach.)"""
    import numpy as np

    qd = dict(zip(q.ids.tolist(), q.probs.tolist()))
    r = np.maximum(p.probs - np.array([qd.get(t, 0.0) for t in p.ids.tolist()]), 0.0)
    total = r.sum()
    if total <= 1e-12:
        return p
    keep = r > 0
    return Dist(p.ids[keep], r[keep] / total)


def accept_probability(p: float, q: float) -> float:
    """min(1, p/q): the chance that the target keeps a token the draft drew with q."""
    if q <= 0:
        return 1.0 if p > 0 else 0.0
    return min(1.0, p / q)


AcceptRule = Callable[[float, float], float]


@dataclass
class Verdict:
    accepted: int          # how many drafted tokens the target kept (a prefix)
    token: int             # the next token: the residual's draw, or the bonus token
    tokens: list[int]      # the drafted tokens kept, then `token`


def verify(drafted: Sequence[int], q: Sequence[Dist], p: Sequence[Dist], uniforms: Sequence[float],
           rule: AcceptRule = accept_probability) -> Verdict:
    """One round of verification. `drafted[i]` was drawn from `q[i]`; `p` holds the target's
    distributions for the same positions plus one (after the last drafted token), so
    len(p) == len(drafted) + 1. `uniforms` are len(drafted) + 1 numbers in [0, 1): one per
    accept test and one for the final draw (residual or bonus). `rule` is the acceptance
    probability (tests pass a wrong one to see it fail)."""
    if len(p) != len(drafted) + 1 or len(q) != len(drafted):
        raise ValueError("verify needs one q per drafted token and one p more")
    for i, x in enumerate(drafted):
        if uniforms[i] < rule(p[i].prob(x), q[i].prob(x)):
            continue
        token = residual(p[i], q[i]).sample(uniforms[-1])
        return Verdict(i, token, [int(t) for t in drafted[:i]] + [token])
    token = p[len(drafted)].sample(uniforms[-1])
    return Verdict(len(drafted), token, [int(t) for t in drafted] + [token])


def next_draft_max(current: int, accepted: int, proposed: int, *, lo: int = 2, hi: int = 16) -> int:
    """Adaptive draft length: one more token after a round the target accepted whole, one
    fewer after a round whose first half was rejected; within [lo, hi]."""
    if proposed and accepted == proposed:
        return min(hi, current + 1)
    if proposed and accepted * 2 < proposed:
        return max(lo, current - 1)
    return current
