"""Speculative sampling's math (llamactl.speculative) on real llama.cpp logits, the catalog's
draft pairs, and the vocabulary check.

The sampling tests are chi-square goodness-of-fit tests at significance level ALPHA = 0.001
each, on a fixed seed (so they are deterministic: the same draws every run). The target is
the kit's tiny F32 model, the draft its Q4_0 copy (about 75% of drafted tokens accepted with
the transform below, so both accepts and rejects happen often); the distributions come
from llama.cpp's own logits for every context the procedure reaches."""

from __future__ import annotations

import math
import random

import pytest

from llamactl import catalog, speculative as sp
from llamactl.draft import resolve_reference, vocabulary_mismatch
from llamactl.errors import UsageError

ALPHA = 0.001
TRIALS = 12000
# every option of the transform in play: temperature, top-k, top-p, min-p, repeat penalty
TRANSFORM = sp.Transform(temperature=1.0, top_k=12, top_p=0.95, min_p=0.02, repeat_penalty=1.2)


# ---------------------------------------------------------------------------------------
# chi-square


def _gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x)."""
    if x <= 0:
        return 1.0
    lg = math.lgamma(a)
    if x < a + 1:   # series for P
        term = total = 1.0 / a
        n = a
        for _ in range(10000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - lg))
    # continued fraction for Q (modified Lentz)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - lg) * h


def chi_square(counts: dict[int, int], expected_probs: dict[int, float]) -> tuple[float, int, float]:
    """Pearson's statistic, degrees of freedom and p-value of `counts` against
    `expected_probs`; categories expected fewer than 5 times are pooled (with any token
    the expected distribution does not have: its probability there is 0)."""
    n = sum(counts.values())
    keys = set(counts) | set(expected_probs)
    big = [k for k in keys if expected_probs.get(k, 0.0) * n >= 5]
    small = [k for k in keys if k not in big]
    cells = [(counts.get(k, 0), expected_probs[k] * n) for k in big]
    pooled_e = sum(expected_probs.get(k, 0.0) for k in small) * n
    pooled_o = sum(counts.get(k, 0) for k in small)
    if pooled_o or pooled_e:
        cells.append((pooled_o, max(pooled_e, 1e-9)))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    return stat, dof, _gamma_q(dof / 2, stat / 2)


def test_chi_square_helper_is_right():
    # known quantiles of the chi-square distribution
    assert _gamma_q(1 / 2, 3.841 / 2) == pytest.approx(0.05, abs=2e-4)
    assert _gamma_q(10 / 2, 29.588 / 2) == pytest.approx(0.001, abs=2e-5)
    assert _gamma_q(5, 2.0) == pytest.approx(0.947347, abs=1e-5)
    fair = {i: 1000 for i in range(6)}
    assert chi_square(fair, {i: 1 / 6 for i in range(6)})[2] > 0.99
    assert chi_square({0: 1300, 1: 700}, {0: 0.5, 1: 0.5})[2] < 1e-10


# ---------------------------------------------------------------------------------------
# the transform is llama.cpp's sampler chain


def _chain_probs(logits, t: sp.Transform, recent: list[int]):
    """llama.cpp's own chain (penalties, top-k, top-p, min-p, temperature) applied to
    `logits`; the probabilities of what it keeps, as a dense vector."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    n = len(logits)
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    try:
        if t.repeat_penalty != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(n, sp.PENALTY_LAST_N, t.repeat_penalty, 0.0, 0.0))
        if t.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(t.top_k))
        if t.top_p < 1:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(t.top_p, 1))
        if t.min_p > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(t.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(t.temperature))
        for tok in recent:
            L.llama_sampler_accept(chain, tok)
        data = (L.llama_token_data * n)()
        for i in range(n):
            data[i].id, data[i].logit, data[i].p = i, float(logits[i]), 0.0
        cur = L.llama_token_data_array(data, n, -1, False)
        L.llama_sampler_apply(chain, ctypes.byref(cur))
        ids = np.array([cur.data[i].id for i in range(cur.size)])
        lg = np.array([cur.data[i].logit for i in range(cur.size)], dtype=np.float64)
    finally:
        L.llama_sampler_free(chain)
    p = np.exp(lg - lg.max())
    out = np.zeros(n)
    out[ids] = p / p.sum()
    return out


def test_transform_is_llama_cpps_sampler_chain():
    """The distributions compared in verification are the ones the engine samples from
    without a draft: llamactl's transform equals llama.cpp's chain on random logits and
    settings (to float rounding)."""
    import numpy as np

    rng = np.random.default_rng(7)
    for _ in range(60):
        n = int(rng.integers(50, 1500))
        logits = (rng.standard_normal(n) * rng.uniform(0.5, 4)).astype(np.float32)
        t = sp.Transform(temperature=float(rng.choice([0.3, 0.8, 1.0, 1.7])),
                         top_k=int(rng.choice([0, 1, 5, 40])), top_p=float(rng.choice([1.0, 0.95, 0.5])),
                         min_p=float(rng.choice([0.0, 0.05, 0.3])), repeat_penalty=float(rng.choice([1.0, 1.3])))
        recent = [int(x) for x in rng.integers(0, n, size=int(rng.integers(0, 90)))]
        ours = sp.processed(logits, t, recent).dense(n)
        assert np.abs(ours - _chain_probs(logits, t, recent)).max() < 1e-5, t


def test_greedy_is_the_argmax_after_the_penalty():
    import numpy as np

    logits = np.array([1.0, 3.0, 2.9, -1.0], dtype=np.float32)
    greedy = sp.Transform(temperature=0, repeat_penalty=1.2)
    assert sp.processed(logits, greedy).ids.tolist() == [1]
    assert sp.processed(logits, greedy, recent=[1]).ids.tolist() == [2]   # 3.0/1.2 < 2.9
    # one-hot distributions: accepted exactly when the draft's token is the target's argmax
    p, q_same, q_other = (sp.Dist(np.array([t]), np.array([1.0])) for t in (1, 1, 2))
    assert sp.verify([1], [q_same], [p, p], [0.999, 0.5]).accepted == 1
    v = sp.verify([2], [q_other], [p, p], [0.0, 0.5])
    assert (v.accepted, v.token, v.tokens) == (0, 1, [1])


def test_residual_is_the_normalised_positive_part():
    import numpy as np

    p = sp.Dist(np.array([0, 1, 2]), np.array([0.5, 0.3, 0.2]))
    q = sp.Dist(np.array([1, 0, 3]), np.array([0.6, 0.2, 0.2]))
    r = sp.residual(p, q)
    assert dict(zip(r.ids.tolist(), r.probs.round(6).tolist())) == {0: 0.6, 2: 0.4}


# ---------------------------------------------------------------------------------------
# the sampling tests: chi-square on real logits


class Oracle:
    """llama.cpp's logits of a model after a context (cached per context), and its
    processed distribution there (the repeat penalty sees the tokens after the prompt)."""

    def __init__(self, path, prompt: list[int]):
        from tests.kit.llama_helpers import all_logits, load_llama

        self.llm = load_llama(path, logits_all=True)
        self.all_logits = all_logits
        self.prompt = list(prompt)
        self.cache: dict[tuple, sp.Dist] = {}

    def dist(self, generated: tuple[int, ...]) -> sp.Dist:
        if generated not in self.cache:
            row = self.all_logits(self.llm, self.prompt + list(generated))[-1]
            self.cache[generated] = sp.processed(row, TRANSFORM, list(generated))
        return self.cache[generated]

    def close(self) -> None:
        self.llm.close()


@pytest.fixture(scope="module")
def oracles(tiny_gguf, tiny_kit_dir):
    from llamactl.quantize import quantize_gguf
    from tests.kit.llama_helpers import load_llama

    q4 = tiny_kit_dir / "tiny-q4_0.gguf"
    if not q4.exists():
        quantize_gguf(tiny_gguf, q4, "Q4_0")
    llm = load_llama(tiny_gguf)
    prompt = llm.tokenize(b"<|begin_of_text|>Hello there, how are you doing today?", add_bos=False, special=True)
    llm.close()
    target, draft = Oracle(tiny_gguf, prompt), Oracle(q4, prompt)
    yield target, draft
    target.close()
    draft.close()


def speculate(target: Oracle, draft: Oracle, rng: random.Random, *, k: int = 2, rule=sp.accept_probability):
    """Generate until two tokens exist, as the engine does it: rounds of k drafted tokens
    verified by `llamactl.speculative.verify`. Returns (t1, t2, first draft accepted)."""
    out: list[int] = []
    first_accepted = None
    while len(out) < 2:
        drafted: list[int] = []
        qs = []
        for _ in range(k):
            q = draft.dist(tuple(out + drafted))
            drafted.append(q.sample(rng.random()))
            qs.append(q)
        ps = [target.dist(tuple(out + drafted[:i])) for i in range(k + 1)]
        verdict = sp.verify(drafted, qs, ps, [rng.random() for _ in range(k + 1)], rule=rule)
        if first_accepted is None:
            first_accepted = verdict.accepted >= 1
        out += verdict.tokens
    return out[0], out[1], first_accepted


def _run(oracles, rule=sp.accept_probability):
    target, draft = oracles
    rng = random.Random(20261202)
    return [speculate(target, draft, rng, rule=rule) for _ in range(TRIALS)]


def _counts(tokens) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tokens:
        out[t] = out.get(t, 0) + 1
    return out


def _probs(d: sp.Dist) -> dict[int, float]:
    return dict(zip(d.ids.tolist(), d.probs.tolist()))


def _most_common(tokens) -> int:
    c = _counts(tokens)
    return max(c, key=c.get)


@pytest.mark.slow
def test_speculative_sampling_keeps_the_targets_distribution(oracles):
    """First token, a token after an accepted draft and a token after a rejected draft:
    each matches the target's own distribution (chi-square, p >= ALPHA)."""
    target, _ = oracles
    samples = _run(oracles)
    accepted = [s for s in samples if s[2]]
    rejected = [s for s in samples if not s[2]]
    # the draft is accepted often, and rejected often: both paths are exercised
    assert 0.5 < len(accepted) / TRIALS < 0.95

    stat, dof, pval = chi_square(_counts(s[0] for s in samples), _probs(target.dist(())))
    assert pval >= ALPHA, f"first token: chi2={stat:.1f} dof={dof} p={pval:.2g}"

    x = _most_common(s[0] for s in accepted)
    after = [s[1] for s in accepted if s[0] == x]
    assert len(after) > 500
    stat, dof, pval = chi_square(_counts(after), _probs(target.dist((x,))))
    assert pval >= ALPHA, f"after an accepted draft: chi2={stat:.1f} dof={dof} p={pval:.2g}"

    y = _most_common(s[0] for s in rejected)
    after = [s[1] for s in rejected if s[0] == y]
    assert len(after) > 300
    stat, dof, pval = chi_square(_counts(after), _probs(target.dist((y,))))
    assert pval >= ALPHA, f"after a rejected draft: chi2={stat:.1f} dof={dof} p={pval:.2g}"


@pytest.mark.slow
def test_always_accepting_fails_the_same_test(oracles):
    """The test has teeth: accepting every drafted token gives the draft's distribution,
    and the chi-square test rejects it."""
    target, _ = oracles
    samples = _run(oracles, rule=lambda p, q: 1.0)
    stat, dof, pval = chi_square(_counts(s[0] for s in samples), _probs(target.dist(())))
    assert pval < ALPHA, f"chi2={stat:.1f} dof={dof} p={pval:.2g}"


# ---------------------------------------------------------------------------------------
# catalog pairs and the vocabulary check


def test_draft_auto_uses_the_catalogs_pairs():
    assert resolve_reference("llama3.3-70b", "auto") == "llama3.2-1b"
    assert resolve_reference("70b:q8_0", "auto") == "llama3.2-1b"
    assert resolve_reference("llama3.2-3b", "AUTO") == "llama3.2-1b"
    assert resolve_reference("llama3.3-70b", "./mine.gguf") == "./mine.gguf"
    assert catalog.draft_for(catalog.get("3b")).name == "llama3.2-1b"


@pytest.mark.parametrize("target", ["llama4-scout", "maverick"])
def test_draft_auto_for_llama4_says_there_is_none(target):
    with pytest.raises(UsageError, match="Llama 4 has no small sibling"):
        resolve_reference(target, "auto")


def test_draft_auto_needs_a_catalog_model():
    with pytest.raises(UsageError, match="catalog"):
        resolve_reference("./model.gguf", "auto")


def test_vocabulary_mismatch_names_the_difference():
    texts = {i: f"t{i}".encode() for i in range(1000)}
    specials = {"bos": 1, "eos": 2}
    same = vocabulary_mismatch(1000, texts.get, specials, 1000, texts.get, specials)
    assert same is None
    assert "1000 tokens against 999" in vocabulary_mismatch(1000, texts.get, specials, 999, texts.get, specials)
    assert "eos" in vocabulary_mismatch(1000, texts.get, specials, 1000, texts.get, {"bos": 1, "eos": 3})
    other = dict(texts)
    other[999] = b"changed"      # the last ids are always compared (special tokens live there)
    assert "token 999" in vocabulary_mismatch(1000, texts.get, specials, 1000, other.get, specials)
