"""Llama 4's chunked KV cache against the real llama.cpp, on tiny models built here.

1. Sizes: the KV cache the plan predicts for `--kv-cache chunked` (f16, and q8_0 with flash
   attention) is the one llama.cpp allocates, cache by cache (its own log lines): the
   global layers keep n_ctx cells, the chunked ones 8192 + n_ubatch rounded up to 256.
2. Reuse: what llama.cpp does when a new turn cuts the chunked cache back, and what the
   engine does about it. Measured on llama.cpp 0.3.36: after 9000 tokens the chunked
   layers' cache holds positions 296-8999 (the newest 8704); `llama_memory_seq_rm` returns
   true for any cut, and a decode after a cut whose chunk has lost its start attends to a
   partial chunk without a word (logits off by 0.2-2.9). A cut at a chunk boundary (8192)
   or inside a chunk whose start is still cached (8900) is exact. The engine keeps the
   cache only up to the chunk's start in the first case (tokens re-evaluated), and its
   answers then equal a fresh evaluation.
3. A multi-turn greedy chat crossing the 8192-token chunk gives the same answers with the
   chunked and the full cache, with the same tokens evaluated per appended turn.
Runtime: 41 s (80 s of CPU) on an idle 2-core machine."""

from __future__ import annotations

import pytest

from llamactl.load import LoadSpec
from llamactl.offload import GIB, MIB, kv_cache_bytes, model_shape, padded_ctx, plan_for_model
from tests.synthetic.llama_probe import run_probe as probe
from tests.synthetic.tiny import write_tiny_gguf

pytestmark = pytest.mark.slow

CHUNK = 8192


@pytest.fixture(scope="module")
def tiny_llama4(tmp_path_factory):
    # 5 layers: 0-2 chunked, 3 global (NoPE), 4 chunked; F32 weights
    return write_tiny_gguf(tmp_path_factory.mktemp("longctx") / "llama4.gguf", arch="llama4", n_layer=5,
                           n_expert=4, n_expert_used=2, n_ctx_train=65536)


@pytest.mark.parametrize("ctx,kv,ubatch", [(20000, "f16", 512), (20000, "q8_0", 512), (12000, "f16", 256)])
def test_chunked_kv_cache_matches_llama_cpp(tiny_llama4, ctx, kv, ubatch):
    from llamactl.gguf_info import read_gguf

    spec = LoadSpec(ctx=ctx, kv_type=kv, flash_attn=kv != "f16", kv_cache="chunked", n_ubatch=ubatch)
    plan = plan_for_model(tiny_llama4, spec, vram=0, ram=64 * GIB)
    assert plan.kv_cache == "chunked"
    args = ["--ctx", str(ctx), "--kv-type", kv, "--chunked", "--ubatch", str(ubatch)]
    got = probe(tiny_llama4, *args + (["--flash-attn"] if kv != "f16" else []))
    shape = model_shape(read_gguf(tiny_llama4))
    window = padded_ctx(CHUNK + ubatch)
    caches = {c["cells"]: c for c in got["kv_caches"]}
    assert set(caches) == {padded_ctx(ctx), window}          # the global cache and the window
    assert caches[padded_ctx(ctx)]["layers"] == 1 and caches[window]["layers"] == 4
    assert sorted(plan.kv_cells) == [window] * 4 + [padded_ctx(ctx)]
    # each cache, in llama.cpp's MiB (two decimals), against the plan's formula
    global_bytes = kv_cache_bytes(shape, ctx, kv, [3], chunked=True, n_ubatch=ubatch)
    chunked_bytes = kv_cache_bytes(shape, ctx, kv, [0, 1, 2, 4], chunked=True, n_ubatch=ubatch)
    assert abs(global_bytes / MIB - caches[padded_ctx(ctx)]["mib"]) <= 0.006
    assert abs(chunked_bytes / MIB - caches[window]["mib"]) <= 0.006
    assert plan.cpu["kv_cache"] == global_bytes + chunked_bytes
    # the full cache would have been n_ctx cells on all five layers
    full = plan_for_model(tiny_llama4, spec.replace(kv_cache="full"), vram=0, ram=64 * GIB)
    assert full.cpu["kv_cache"] == kv_cache_bytes(shape, ctx, kv) > plan.cpu["kv_cache"]
    reported = got["buffers"]["compute"]["CPU"] * MIB
    assert 0.5 * reported <= plan.cpu["compute"] <= 2.0 * reported


# --- reuse ------------------------------------------------------------------------------


def _ids(n: int, seed: int) -> list[int]:
    import numpy as np

    return [int(x) for x in np.random.default_rng(seed).integers(0, 250, n)]


def _logits(llm, count: int):
    """The logits of the last `count` evaluated positions (a logits_all context)."""
    import numpy as np

    return np.array(llm.scores[llm.n_tokens - count: llm.n_tokens], dtype=np.float32)


@pytest.fixture(scope="module")
def filled(tiny_llama4):
    """llama.cpp with the chunked cache after 9000 tokens, its saved state, and a fresh
    full-cache context as the reference."""
    from tests.kit.llama_helpers import load_llama

    llm = load_llama(tiny_llama4, n_ctx=12288, logits_all=True, f32_cache=True, swa_full=False)
    ref = load_llama(tiny_llama4, n_ctx=12288, logits_all=True, f32_cache=True, swa_full=True)
    prompt = _ids(9000, 1)
    llm.eval(prompt)
    yield llm, llm.save_state(), ref, prompt
    llm.close()
    ref.close()


@pytest.mark.parametrize("keep,exact", [(8900, True), (8192, True), (8191, False), (4000, False)])
def test_llama_cpp_silently_reuses_a_chunk_it_no_longer_holds(filled, keep, exact):
    """What llama.cpp itself does (the engine's rule rests on it): the window keeps the
    newest 8704 positions; cutting back into a chunk whose start is gone is 'successful'
    and wrong."""
    import numpy as np

    from llamactl.engine.bindings import oldest_cached_position

    llm, state, ref, prompt = filled
    llm.load_state(state)
    assert oldest_cached_position(llm) == 9000 - (CHUNK + 512)
    assert llm._ctx.kv_cache_seq_rm(0, keep, -1) is True       # llama.cpp never refuses
    llm.n_tokens = keep
    new = _ids(64, 2)
    llm.eval(new)
    ref.reset()
    ref.eval(prompt[:keep] + new)
    diff = float(np.abs(_logits(llm, 64) - _logits(ref, 64)).max())
    if exact:
        assert diff < 1e-4, diff
    else:
        assert diff > 1e-2, f"cut at {keep}: llama.cpp was right after all ({diff})"


@pytest.fixture(scope="module")
def engines(tiny_llama4):
    from llamactl.engine import Engine, EngineOptions

    made = {mode: Engine.load(tiny_llama4, EngineOptions(load=LoadSpec(
        ctx=12288, kv_cache=mode, kv_type="f32", flash_attn=False, gpu_layers=0, threads=2), seed=0))
        for mode in ("full", "chunked")}
    assert made["chunked"].plan.kv_cache == "chunked" and made["full"].plan.kv_cache == "full"
    yield made
    for e in made.values():
        e.close()


def _greedy(engine, prompt: list[int], n: int = 8):
    from llamactl.engine import Sampling

    out = [p.token for p in engine.stream_tokens(prompt, Sampling(temperature=0.0, max_tokens=n),
                                                 ignore_eos=True) if hasattr(p, "token")]
    return out, engine.last_stats


def test_the_engine_re_evaluates_from_the_chunk_start_when_the_window_lost_it(engines):
    eng = engines["chunked"]
    first = _ids(9000, 1)
    _greedy(eng, first)
    # a new prompt that departs at 4000: chunk 0's start (position 0) has left the window
    second = first[:4000] + _ids(100, 3)
    got, stats = _greedy(eng, second)
    assert stats.prompt_tokens_evaluated == len(second)        # from the chunk's start (0)
    want, _ = _greedy(engines["full"], second, 8)
    assert got == want
    # departing inside the last chunk: its start (8192) is cached, only the rest is evaluated
    third = second[:4000] + first[4000:8900]
    _greedy(eng, third)
    fourth = third[:8800] + _ids(50, 4)
    got, stats = _greedy(eng, fourth)
    assert stats.prompt_tokens_evaluated == 50
    engines["full"].reset()
    assert got == _greedy(engines["full"], fourth)[0]


def test_multi_turn_chat_gives_the_same_answers_with_both_caches(engines):
    """Ten greedy turns of about 1000 tokens each (160 words, byte-level tokens) (past the 8192-token chunk), then the last
    question asked again (as /retry does): the same answers, and the same tokens evaluated
    per appended turn; the re-asked turn departs inside the newest chunk, so the window
    still holds it."""
    from llamactl.engine import Sampling

    answers: dict[str, list[str]] = {}
    evaluated: dict[str, list[int]] = {}
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for mode, eng in engines.items():
        eng.reset()
        messages: list[dict] = []
        answers[mode], evaluated[mode] = [], []
        for turn in range(10):
            text = " ".join(words[(turn * 7 + i) % len(words)] for i in range(160))
            messages.append({"role": "user", "content": f"turn {turn}: {text}"})
            pieces = [p.text for p in eng.stream_chat(messages, Sampling(temperature=0.0, max_tokens=12))
                      if hasattr(p, "text")]
            answers[mode].append("".join(pieces))
            evaluated[mode].append(eng.last_stats.prompt_tokens_evaluated)
            messages.append({"role": "assistant", "content": answers[mode][-1]})
        assert eng.context_used > CHUNK + 512
        messages.pop()  # ask the last question again
        pieces = [p.text for p in eng.stream_chat(messages, Sampling(temperature=0.0, max_tokens=12))
                  if hasattr(p, "text")]
        answers[mode].append("".join(pieces))
        evaluated[mode].append(eng.last_stats.prompt_tokens_evaluated)
    assert answers["chunked"] == answers["full"]
    assert evaluated["chunked"] == evaluated["full"]
