"""Speculative decoding in the engine's decode path (llamactl.engine.speculate), on the kit's
tiny models through the real llama.cpp.

Greedy: the output with a draft is the target's own, token for token, for a draft that is
accepted often (the Q8_0 copy of the target) and one that is rejected almost always (a
different random model with the same vocabulary).

Sampling: chi-square goodness-of-fit tests at significance level ALPHA = 0.001 each, on
fixed seeds (deterministic): the first generated token, the second (drawn by the first
round: an accepted draft or the residual's draw) and the third after an accepted and after a
rejected draft, each against the target's own distribution computed from llama.cpp's
logits (tests/test_speculative.py checks that this distribution is llama.cpp's sampler
chain's)."""

from __future__ import annotations

import pytest

from llamactl import speculative as sp
from llamactl.engine import Engine, EngineOptions, Piece, Sampling, Stats
from llamactl.errors import UsageError
from llamactl.load import LoadSpec
from tests.test_speculative import ALPHA, chi_square

pytestmark = pytest.mark.slow

OPTIONS = EngineOptions(load=LoadSpec(ctx=512, threads=1))
PROMPT = "<|begin_of_text|>Hello there, how are you doing today?"


@pytest.fixture(scope="module")
def trained(tiny_gguf):
    return tiny_gguf


@pytest.fixture(scope="module")
def trained_q8(tiny_gguf_q8):
    return tiny_gguf_q8


@pytest.fixture(scope="module")
def stranger(tiny_gguf_factory):
    """A different random model with the same vocabulary."""
    return tiny_gguf_factory("f32", seed=99)


@pytest.fixture(scope="module")
def target(trained):
    eng = Engine.load(trained, OPTIONS)
    yield eng
    eng.close()


def _run(engine, prompt, sampling, **kw):
    tokens, text, stats = [], [], None
    for item in engine.stream_tokens(prompt, sampling, **kw):
        if isinstance(item, Piece):
            text.append(item.text)
            if item.token >= 0:
                tokens.append(item.token)
        else:
            stats = item
    assert isinstance(stats, Stats)
    return tokens, "".join(text), stats


def _detach(engine):
    if engine.draft is not None:
        engine.draft.close()
        engine.draft = None


@pytest.mark.parametrize("which, draft_max", [("q8", None), ("q8", 3), ("stranger", None)])
def test_greedy_output_is_the_targets_token_for_token(target, trained_q8, stranger, which, draft_max):
    _detach(target)
    prompt = target.tokenize(PROMPT)
    greedy = Sampling(temperature=0, max_tokens=48)
    base_tokens, base_text, base = _run(target, prompt, greedy, ignore_eos=True)
    assert base.draft_tokens == 0 and base.draft_accepted_tokens == 0
    target.load_draft(trained_q8 if which == "q8" else stranger, draft_max)
    try:
        tokens, text, stats = _run(target, prompt, greedy, ignore_eos=True)
        assert tokens == base_tokens
        assert text == base_text
        assert stats.completion_tokens == 48 and stats.finish_reason == "length"
        assert stats.draft_tokens > 0
        rate = stats.draft_accepted_tokens / stats.draft_tokens
        if which == "q8":
            assert rate > 0.6, rate            # the quantized copy agrees often
        else:
            assert rate < 0.2, rate            # the stranger almost never
        # the caches hold the conversation as without a draft: prompt + answer but its last token
        assert target.context_tokens == prompt + base_tokens[:-1]
        held = target.draft.engine.context_tokens
        assert held == (prompt + base_tokens)[:len(held)]
        # the next call reuses both caches: one token evaluated, output unchanged
        again, _, s2 = _run(target, prompt, greedy, ignore_eos=True)
        assert again == base_tokens and s2.prompt_tokens_evaluated == 1
    finally:
        _detach(target)


def test_chat_turns_reuse_both_caches(target, trained_q8):
    _detach(target)
    target.reset()
    messages = [{"role": "user", "content": "Tell me about the weather in Paris today."}]
    greedy = Sampling(temperature=0, max_tokens=12)
    plain = []
    for _ in range(2):
        tokens, text, s = _run(target, target.chat_tokens(messages), greedy)
        plain.append((tokens, s.prompt_tokens_evaluated))
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And tomorrow?"}]
    target.reset()
    target.load_draft(trained_q8, 4)
    try:
        messages = messages[:1]
        for turn in range(2):
            tokens, text, s = _run(target, target.chat_tokens(messages), greedy)
            assert (tokens, s.prompt_tokens_evaluated) == plain[turn]
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And tomorrow?"}]
        prompt3 = target.chat_tokens(messages)
        held = target.draft.engine.context_tokens
        assert len(held) > 20 and prompt3[:len(held)] == held   # the draft's cache is a prefix too
    finally:
        _detach(target)
        target.reset()


def test_max_tokens_stop_and_context_limit_as_without_a_draft(trained, trained_q8):
    eng = Engine.load(trained, EngineOptions(load=LoadSpec(ctx=256, threads=1)))
    try:
        prompt = eng.tokenize(PROMPT)
        results = []
        for draft in (False, True):
            if draft:
                eng.load_draft(trained_q8, 8)
            runs = []
            for n in (1, 2, 5, 9):
                tokens, _, s = _run(eng, prompt, Sampling(temperature=0, max_tokens=n), ignore_eos=True)
                runs.append((tokens, s.completion_tokens, s.finish_reason))
            tokens, _, s = _run(eng, prompt, Sampling(temperature=0), ignore_eos=True)  # to the context's end
            runs.append((tokens, s.completion_tokens, s.finish_reason, s.context_tokens))
            tokens, _, s = _run(eng, prompt, Sampling(temperature=0, max_tokens=30))    # stops at end of turn
            runs.append((tokens, s.finish_reason))
            results.append(runs)
        assert results[0] == results[1]
        assert results[0][4][2] == "length" and results[0][4][1] == 256 - len(prompt)
    finally:
        eng.close()


def test_grammar_generates_without_drafting(target, trained_q8):
    target.load_draft(trained_q8, 4)
    try:
        prompt = target.tokenize(PROMPT)
        _, text, s = _run(target, prompt, Sampling(temperature=0, max_tokens=8, grammar='root ::= "yes" | "no"'))
        assert text in ("yes", "no") and s.draft_tokens == 0
    finally:
        _detach(target)


def test_vocabulary_mismatch_names_both_models(target, tmp_path):
    from tests.synthetic.tiny import write_tiny_gguf

    other = write_tiny_gguf(tmp_path / "other-vocab.gguf", n_layer=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=64)
    with pytest.raises(UsageError) as err:
        target.load_draft(other)
    assert err.value.exit_code == 2
    assert "other-vocab.gguf" in err.value.message and target.model_path.name in err.value.message
    assert target.draft is None


# ---------------------------------------------------------------------------------------
# sampling: the target's distribution, with a draft that is accepted and rejected often

TRIALS = 3000
SAMPLING = dict(temperature=1.0, top_k=6, top_p=0.95, min_p=0.02, repeat_penalty=1.2)


@pytest.fixture(scope="module")
def q4(tiny_gguf, tiny_kit_dir):
    from llamactl.quantize import quantize_gguf

    out = tiny_kit_dir / "tiny-q4_0.gguf"
    if not out.exists():
        quantize_gguf(tiny_gguf, out, "Q4_0")
    return out


def test_sampling_with_a_draft_keeps_the_targets_distribution(tiny_gguf, q4):
    from tests.kit.llama_helpers import all_logits, load_llama

    eng = Engine.load(tiny_gguf, OPTIONS)
    eng.load_draft(q4, 2)
    try:
        prompt = eng.tokenize(PROMPT)
        samples = []
        for seed in range(TRIALS):
            tokens, _, s = _run(eng, prompt, Sampling(seed=seed, max_tokens=3, **SAMPLING), ignore_eos=True)
            # max_tokens 3: round 1 drafts one token (t2), t3 is the bonus token when it was
            # accepted and a plain step of the target when it was not
            assert s.draft_tokens == 1
            samples.append((tokens[0], tokens[1], tokens[2], s.draft_accepted_tokens == 1))
    finally:
        eng.close()

    llm = load_llama(tiny_gguf, logits_all=True)
    transform = sp.Transform.of(Sampling(**SAMPLING))

    def target(generated: tuple[int, ...]) -> dict[int, float]:
        d = sp.processed(all_logits(llm, prompt + list(generated))[-1], transform, list(generated))
        return dict(zip(d.ids.tolist(), d.probs.tolist()))

    def counts(tokens) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in tokens:
            out[t] = out.get(t, 0) + 1
        return out

    def mode(tokens) -> int:
        c = counts(tokens)
        return max(c, key=c.get)

    try:
        accepted = sum(s[3] for s in samples) / TRIALS
        assert 0.3 < accepted < 0.95, accepted        # both paths are exercised
        stat, dof, pval = chi_square(counts(s[0] for s in samples), target(()))
        assert pval >= ALPHA, f"first token: chi2={stat:.1f} dof={dof} p={pval:.2g}"
        x = mode(s[0] for s in samples)
        second = [s for s in samples if s[0] == x]
        stat, dof, pval = chi_square(counts(s[1] for s in second), target((x,)))
        assert pval >= ALPHA, f"second token (the first round's): chi2={stat:.1f} dof={dof} p={pval:.2g}"
        for was_accepted, label, least in ((True, "accepted", 150), (False, "rejected", 80)):
            group = [s for s in second if s[3] == was_accepted]
            y = mode(s[1] for s in group)
            third = [s[2] for s in group if s[1] == y]
            assert len(third) >= least, (label, len(third))
            stat, dof, pval = chi_square(counts(third), target((x, y)))
            assert pval >= ALPHA, f"after a {label} draft: chi2={stat:.1f} dof={dof} p={pval:.2g}"
    finally:
        llm.close()
