"""Speculative decoding in the server's batched slots (llamactl.engine.batch with a draft
model): at temperature 0 every slot's tokens are exactly the target's alone, whether the
draft agrees with the target (its Q8_0 copy) or not (another random model with the same
vocabulary); with sampling, the first tokens' distribution is the target's (chi-square)."""

from __future__ import annotations

import pytest

from llamactl.engine import Engine
from llamactl.engine.batch import BatchDecoder, Job
from llamactl.engine.types import EngineOptions, Sampling
from llamactl.load import LoadSpec

PROMPTS = ["Once upon a time", "The llama walked", "In the mountains there was", "Tell me about rivers"]


def _load(path):
    return Engine.load(path, EngineOptions(load=LoadSpec(ctx=256, threads=1)))


@pytest.fixture(scope="module")
def target(tiny_gguf):
    engine = _load(tiny_gguf)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def good_draft(tiny_gguf_q8):
    engine = _load(tiny_gguf_q8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def poor_draft(tiny_gguf_factory):
    engine = _load(tiny_gguf_factory("f32", seed=7))
    yield engine
    engine.close()


def _run(target, draft, sampling_of, prompts, *, draft_max=4):
    """Every prompt as a job of one decoder (all in flight together); per job its token ids and Stats."""
    decoder = BatchDecoder(target, len(prompts), 256, 64, 64, draft=draft, draft_max=draft_max)
    try:
        outs = []
        for i, text in enumerate(prompts):
            got: list = []
            job = Job(prompt=target.tokenize(text, add_bos=True), sampling=sampling_of(i), emit=got.append)
            decoder.start(decoder.choose_slot(job.prompt), job)
            outs.append(got)
        while decoder.step():
            pass
        return [([p.token for p in got[:-1] if p.token >= 0], got[-1]) for got in outs]
    finally:
        decoder.close()


def _greedy(i):
    return Sampling(temperature=0, max_tokens=24, seed=1)


@pytest.mark.parametrize("which", ["good", "poor"])
def test_greedy_slots_with_a_draft_give_the_targets_own_tokens(target, good_draft, poor_draft, which):
    draft = good_draft if which == "good" else poor_draft
    alone = _run(target, None, _greedy, PROMPTS)
    drafted = _run(target, draft, _greedy, PROMPTS)
    assert [ids for ids, _ in drafted] == [ids for ids, _ in alone]
    assert all(len(ids) > 0 for ids, _ in alone)
    proposed = sum(s.draft_tokens for _, s in drafted)
    accepted = sum(s.draft_accepted_tokens for _, s in drafted)
    assert proposed > 0 and 0 <= accepted <= proposed
    if which == "good":
        assert accepted / proposed > 0.6, (accepted, proposed)
    else:
        assert accepted / proposed < 0.6, (accepted, proposed)


def test_sampled_slots_with_a_draft_keep_the_targets_distribution(tiny_gguf, tiny_kit_dir):
    """2,000 requests sampled with a Q4_0 draft through the batched slots. The first token
    comes from the target's own sampler (it follows the prompt); the second from a drafted
    token verified (accepted, or replaced from the residual): after the most common first
    token, its distribution is the target's own (chi-square at the significance level of
    tests/test_speculative.py), every sampling option in play."""
    from llamactl.quantize import quantize_gguf
    from tests.test_speculative import ALPHA, TRANSFORM, Oracle, chi_square

    q4 = tiny_kit_dir / "tiny-q4_0.gguf"
    if not q4.exists():
        quantize_gguf(tiny_gguf, q4, "Q4_0")
    target, draft = _load(tiny_gguf), _load(q4)
    prompt = target.tokenize("<|begin_of_text|>Hello there, how are you doing today?")
    oracle = Oracle(tiny_gguf, prompt)
    decoder = BatchDecoder(target, 4, 256, 64, 64, draft=draft, draft_max=2, adaptive=False)
    try:
        pairs: list[tuple[int, int]] = []
        proposed = accepted = 0
        pending = list(range(2000))
        while pending or decoder.busy:
            while pending and decoder.idle:
                seed = pending.pop()
                got: list = []
                sampling = Sampling(temperature=TRANSFORM.temperature, top_k=TRANSFORM.top_k, top_p=TRANSFORM.top_p,
                                    min_p=TRANSFORM.min_p, repeat_penalty=TRANSFORM.repeat_penalty,
                                    seed=seed, max_tokens=3)

                def emit(item, got=got):
                    nonlocal proposed, accepted
                    got.append(item)
                    if hasattr(item, "draft_tokens"):
                        proposed += item.draft_tokens
                        accepted += item.draft_accepted_tokens
                        ids = [p.token for p in got if getattr(p, "token", -1) >= 0]
                        pairs.append((ids[0], ids[1]))
                job = Job(prompt=list(prompt), sampling=sampling, emit=emit, ignore_eos=True)
                decoder.start(decoder.choose_slot(job.prompt), job)
            decoder.step()
        assert len(pairs) == 2000 and proposed == 2000
        assert 0.3 < accepted / proposed < 0.98       # both acceptance and rejection happen
        firsts: dict[int, int] = {}
        for a, _ in pairs:
            firsts[a] = firsts.get(a, 0) + 1
        x = max(firsts, key=firsts.get)
        counts: dict[int, int] = {}
        for a, b in pairs:
            if a == x:
                counts[b] = counts.get(b, 0) + 1
        assert sum(counts.values()) > 300
        p = oracle.dist((x,))
        stat, dof, pval = chi_square(counts, dict(zip(p.ids.tolist(), p.probs.tolist())))
        assert pval >= ALPHA, f"second token: chi2={stat:.1f} dof={dof} p={pval:.2g}"
    finally:
        decoder.close()
        oracle.close()
        target.close()
        draft.close()
