"""The generation engine on the tiny converted model, through the real llama.cpp."""

from __future__ import annotations

import datetime as dt

import pytest

from llamactl.engine import ChatTemplate, Engine, EngineOptions, Piece, Sampling, Stats, bindings
from llamactl.load import LoadSpec
from llamactl.errors import LlamactlError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    eng = Engine.load(tiny_gguf, EngineOptions(load=LoadSpec(ctx=512, threads=1)))
    yield eng
    eng.close()


def _run(gen):
    pieces, stats = [], None
    for item in gen:
        if isinstance(item, Piece):
            assert stats is None, "a Piece came after the Stats"
            pieces.append(item)
        else:
            stats = item
    assert isinstance(stats, Stats)
    return pieces, stats


GREEDY = Sampling(temperature=0, max_tokens=12)


def test_stream_yields_pieces_then_stats(engine):
    engine.reset()
    prompt = engine.tokenize("<|begin_of_text|>Hello there, how are you?")
    pieces, stats = _run(engine.stream_tokens(prompt, Sampling(temperature=0, max_tokens=7), ignore_eos=True))
    assert len(pieces) == 7 == stats.completion_tokens
    assert stats.finish_reason == "length"
    assert stats.prompt_tokens == len(prompt) == stats.prompt_tokens_evaluated
    assert stats.ttft_seconds > 0 and stats.prompt_tps > 0 and stats.generation_tps > 0
    assert stats.context_tokens == len(prompt) + 7
    # the text is the detokenized tokens
    assert "".join(p.text for p in pieces) == engine.detokenize([p.token for p in pieces])
    assert engine.last_stats is stats


def test_max_tokens_zero_evaluates_the_prompt_only(engine):
    prompt = engine.tokenize("<|begin_of_text|>Only the prompt, please.")
    pieces, stats = _run(engine.stream_tokens(prompt, Sampling(max_tokens=0), reuse_cache=False))
    assert pieces == []
    assert stats.completion_tokens == 0
    assert stats.prompt_tokens_evaluated == len(prompt)
    assert engine.context_tokens == prompt


def test_turn_two_evaluates_only_the_new_tokens(engine):
    """KV reuse: the second turn evaluates what is not in the cache, not the history."""
    engine.reset()
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Tell me about the weather in Paris today."}]
    pieces, s1 = _run(engine.stream_chat(messages, Sampling(temperature=0, max_tokens=16)))
    assert s1.prompt_tokens_evaluated == s1.prompt_tokens
    cached = engine.context_tokens
    answer = "".join(p.text for p in pieces)
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": "And tomorrow?"}]
    prompt2 = engine.chat_tokens(messages)
    # the cache is a prefix of the new prompt: nothing of turn 1 has to be evaluated again
    assert prompt2[:len(cached)] == cached
    new_part = engine.tokenize("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd tomorrow?"
                               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    _, s2 = _run(engine.stream_chat(messages, Sampling(temperature=0, max_tokens=4)))
    assert s2.prompt_tokens == len(prompt2)
    assert s2.prompt_tokens_evaluated == len(prompt2) - len(cached)
    # the new message, its headers, and the last token sampled in turn 1 (never fed back)
    assert s2.prompt_tokens_evaluated <= len(new_part) + 1
    assert s2.prompt_tokens_evaluated < s2.prompt_tokens // 2


def test_reuse_cache_false_evaluates_everything(engine):
    prompt = engine.tokenize("<|begin_of_text|>Same prompt twice.")
    _run(engine.stream_tokens(prompt, Sampling(max_tokens=0)))
    _, again = _run(engine.stream_tokens(prompt, Sampling(max_tokens=0)))
    assert again.prompt_tokens_evaluated == 1  # the last token only, for fresh logits
    _, fresh = _run(engine.stream_tokens(prompt, Sampling(max_tokens=0), reuse_cache=False))
    assert fresh.prompt_tokens_evaluated == len(prompt)


def test_same_seed_same_tokens(engine):
    prompt = engine.tokenize("<|begin_of_text|>Once upon a time")
    sampling = Sampling(temperature=1.0, min_p=0, top_k=0, top_p=1.0, seed=42, max_tokens=20)
    a, _ = _run(engine.stream_tokens(prompt, sampling, ignore_eos=True, reuse_cache=False))
    b, _ = _run(engine.stream_tokens(prompt, sampling, ignore_eos=True, reuse_cache=False))
    c, _ = _run(engine.stream_tokens(prompt, Sampling(**{**sampling.to_dict(), "seed": 43}),
                                     ignore_eos=True, reuse_cache=False))
    assert [p.token for p in a] == [p.token for p in b]
    assert [p.token for p in a] != [p.token for p in c]


def test_end_of_turn_tokens_stop(engine):
    ids = {t: engine.tokenize(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")}
    for text, toks in ids.items():
        assert len(toks) == 1, text
        assert engine.is_stop(toks[0]), text
    assert not engine.is_stop(engine.tokenize("hello")[0])


def test_generation_stops_at_end_of_turn(engine, monkeypatch):
    """Whatever the sampler picks, an end-of-turn token ends the answer with "stop" and
    is not part of the text."""
    eot = engine.tokenize("<|eot_id|>")[0]
    calls = {"n": 0}

    class ScriptedSampler:
        def sample(self, ctx, idx):
            calls["n"] += 1
            return eot if calls["n"] == 4 else engine.tokenize(" hi")[0]

    monkeypatch.setattr(bindings, "sampler_chain", lambda *args, **kw: ScriptedSampler())
    pieces, stats = _run(engine.stream_tokens(engine.tokenize("<|begin_of_text|>x"), Sampling()))
    assert stats.finish_reason == "stop" and stats.completion_tokens == 3 == len(pieces)
    assert "eot" not in "".join(p.text for p in pieces)


def test_prompt_longer_than_context_is_an_error(engine):
    prompt = engine.tokenize("<|begin_of_text|>" + "word " * 600)
    assert len(prompt) >= engine.n_ctx
    with pytest.raises(LlamactlError) as err:
        list(engine.stream_tokens(prompt, GREEDY))
    assert str(len(prompt)) in str(err.value) and str(engine.n_ctx) in str(err.value)


def test_chat_template_comes_from_the_gguf(engine):
    assert engine.template.name == "gguf"
    text = engine.render([{"role": "user", "content": "  hi  "}])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_template_date_is_frozen_so_history_renders_identically():
    """A template that stamps the time renders the same bytes on every turn."""
    src = "{{ strftime_now('%H:%M:%S.%f') }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    tpl = ChatTemplate(src, now=dt.datetime(2026, 1, 2, 3, 4, 5, 6))
    first = tpl.render([{"role": "user", "content": "a"}])
    second = tpl.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert first == "03:04:05.000006[a]"
    assert second.startswith(first)


def test_chat_format_override(tiny_gguf):
    eng = Engine.load(tiny_gguf, EngineOptions(load=LoadSpec(ctx=256), chat_format="chatml"))
    try:
        assert eng.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    finally:
        eng.close()
    with pytest.raises(LlamactlError):
        Engine.load(tiny_gguf, EngineOptions(load=LoadSpec(ctx=256), chat_format="no-such-format"))


def test_llama4_gets_the_full_size_cache(tmp_path):
    """Llama 4's chunked attention: with the full-size cache (swa_full) llama.cpp can cut
    any suffix of the cache and so reuse any prefix; --kv-cache auto keeps it when it fits
    as well as the chunked one (always at a short context). The chunked cache's limits:
    tests/test_longctx_cache.py."""
    from tests.synthetic.tiny import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny-llama4.gguf", arch="llama4", n_layer=4, n_embd=128,
                           n_head=2, n_head_kv=1, n_ff=256, n_ff_exp=128, n_expert=4)
    eng = Engine.load(path, EngineOptions(load=LoadSpec(ctx=256)))
    try:
        assert eng.architecture == "llama4"
        assert eng.llama.context_params.swa_full is True
        msgs = [{"role": "user", "content": "the first question"}]
        _run(eng.stream_chat(msgs, Sampling(temperature=0, max_tokens=3)))
        cached = eng.context_tokens
        msgs += [{"role": "assistant", "content": "x"}, {"role": "user", "content": "again"}]
        _, s2 = _run(eng.stream_chat(msgs, Sampling(temperature=0, max_tokens=2)))
        assert s2.prompt_tokens_evaluated < s2.prompt_tokens
    finally:
        eng.close()


def test_answers_are_reused_as_generated(engine, monkeypatch):
    """The model's own answer tokens stay in the cache even where the rendered history
    differs from their text: whitespace the template trims, a special token the answer
    shows as nothing."""
    engine.reset()
    script = (engine.tokenize(" hi") + engine.tokenize("<|start_header_id|>") + engine.tokenize(" yo")
              + engine.tokenize("\n") + engine.tokenize("<|eot_id|>"))
    calls = {"n": 0}

    class ScriptedSampler:
        def sample(self, ctx, idx):
            calls["n"] += 1
            return script[calls["n"] - 1]

    monkeypatch.setattr(bindings, "sampler_chain", lambda *args, **kw: ScriptedSampler())
    messages = [{"role": "user", "content": "say hi"}]
    pieces, s1 = _run(engine.stream_chat(messages, Sampling()))
    assert s1.finish_reason == "stop" and s1.completion_tokens == len(script) - 1
    answer = "".join(p.text for p in pieces)
    assert answer == " hi yo\n"
    cached = engine.context_tokens
    monkeypatch.undo()
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "again"}]
    assert engine.chat_tokens(messages)[:len(cached)] == cached
    _, s2 = _run(engine.stream_chat(messages, Sampling(temperature=0, max_tokens=1)))
    assert s2.prompt_tokens_evaluated == s2.prompt_tokens - len(cached)


def test_llama4_end_of_turn_token_stops(tmp_path, monkeypatch):
    """Llama 4 ends a turn with <|eot|>; the engine stops there even where the GGUF does
    not mark it as end-of-generation."""
    from tests.synthetic import tiny

    monkeypatch.setattr(tiny, "SPECIALS", tiny.SPECIALS + ["<|header_start|>", "<|header_end|>", "<|eot|>"])
    path = tiny.write_tiny_gguf(tmp_path / "eot.gguf", n_layer=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=128)
    eng = Engine.load(path, EngineOptions(load=LoadSpec(ctx=256), chat_format="llama4"))
    try:
        eot = eng.tokenize("<|eot|>")
        assert len(eot) == 1 and eng.is_stop(eot[0])
        assert not eng.is_stop(eng.tokenize("<|header_start|>")[0])
        assert eng.render([{"role": "user", "content": "hi"}]).endswith(
            "<|header_start|>user<|header_end|>\n\nhi<|eot|><|header_start|>assistant<|header_end|>\n\n")
    finally:
        eng.close()


@pytest.mark.parametrize("source,what", [
    ("{% for m in messages %}{{ m['content'] }", "is not valid Jinja (line 1)"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}\n{% for i in range(10**7) %}x{% endfor %}",
     "does something the template sandbox refuses (line 2)"),
    ("{{ messages[0]['content'].__class__.__mro__ }}", "does something the template sandbox refuses"),
])
def test_a_broken_model_template_names_the_model_file(tmp_path, source, what):
    """The model's own template is at fault, and the error says so and which file: not an
    'unexpected error, report it'."""
    from llamactl.engine import ChatTemplateError
    from tests.synthetic.tiny import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "bad-template.gguf", n_layer=1, n_embd=64, n_head=2, n_head_kv=1,
                           n_ff=128, chat_template=source)
    try:
        eng = Engine.load(path, EngineOptions(load=LoadSpec(ctx=256)))
    except ChatTemplateError as exc:
        err = exc
    else:
        try:
            with pytest.raises(ChatTemplateError) as info:
                eng.render([{"role": "user", "content": "hi"}])
            err = info.value
        finally:
            eng.close()
    assert f"the chat template in {path} {what}" in err.message
    assert "--chat-format" in err.hint and err.exit_code == 1


def test_a_broken_template_file_is_named_through_the_cli(cli, tiny_gguf, tmp_path):
    bad = tmp_path / "mine.jinja"
    bad.write_text("{% if %}", encoding="utf-8")
    proc = cli("chat", str(tiny_gguf), "hello", "--chat-format", str(bad), "-n", "1")
    assert proc.returncode == 1
    assert f"the chat template {bad} is not valid Jinja" in proc.err
    assert "unexpected" not in proc.err and "Traceback" not in proc.err and proc.out == ""


def test_unsupported_bindings_are_refused_at_load(monkeypatch, tiny_gguf):
    """The engine uses llama-cpp-python internals written for 0.3.36: another version is one
    clear error at load, not a failure mid-generation."""
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "__version__", "0.4.2")
    monkeypatch.setitem(bindings._CHECKED, "ok", False)
    with pytest.raises(bindings.BindingsError, match="0.4.2") as info:
        Engine.load(tiny_gguf, EngineOptions(load=LoadSpec(ctx=256)))
    assert "llama-cpp-python>=0.3.36,<0.4" in info.value.hint
