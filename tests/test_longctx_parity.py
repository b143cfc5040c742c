"""Llama 4 past the 8192-token chunk: llama.cpp's logits against transformers' in float32,
with the full-size KV cache (swa_full=True) and with the chunked one (swa_full=False).

The chunk size cannot be made smaller for a cheaper test: llama.cpp (vendored in
llama-cpp-python 0.3.36, src/models/llama4.cpp) reads `llama4.attention.sliding_window`
only to switch chunked attention off (0: no chunks, and RoPE on every layer); any other
value is replaced by 8192, and so are the attention-temperature constants. So this test uses
Meta's 8192 and a prompt of 9000 tokens: position 8192 starts a new chunk, the chunked
layers (0-2) must stop seeing the first chunk there while the global NoPE layer (3) sees
everything, and the attention temperature of the NoPE layer changes from 1 to
1 + 0.1·log 2 at position 8191. With swa_full=False the chunked layers' cache has
8192 + 512 (n_ubatch) = 8704 cells, so positions 8704-8999 are written over evicted cells:
the test checks that the eviction really happened.

The model is the kit's tiny Scout-like checkpoint (4 layers, hidden 256, 4 experts) with
routing to all 4 experts: with top-1 routing, float32 rounding differences (1e-5) flip the
router at near-tied tokens somewhere in 9000 random tokens (measured: from position 3131
on, 1070 positions off by up to 1.7), which says nothing about the cache. The prompt is
random token ids (BOS first).

Reference: transformers with SDPA attention, not eager: over 9000 tokens eager attention
takes 31 s and 3.7 GB here (a 4 x 9000 x 9000 float32 score matrix per layer, plus its
mask and softmax copies), SDPA 5 s and 1 GB, and the two agree to 4e-6 (measured on this
model), far inside the tolerance.

Measured (max |Δlogit| over all 9000 positions and the vocabulary, F32 KV cache):
4.5e-4 with either cache (2.4e-4 before position 8192, 4.5e-4 after), top-1 agreement 100%.
Runtime: about 55 s of CPU (checkpoint 11 s, transformers 5 s, llama.cpp 2 x 10-15 s).
Teeth, measured against the same reference: a model without chunked attention differs by
5.1 past position 8192 (top-1 2%); one without the attention temperature by 0.018."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

CHUNK = 8192
N_TOKENS = 9000
N_UBATCH = 512
TOL_F32 = 1e-3          # the text tolerance for f32 weights and an F32 KV cache
SPEC = dict(vision=False, text_overrides=(("max_position_embeddings", 16384), ("num_experts_per_tok", 4)))


@pytest.fixture(scope="module")
def model(llama4_checkpoint_factory, llama4_gguf_factory):
    return llama4_checkpoint_factory("scout", **SPEC), llama4_gguf_factory("scout", "f32", **SPEC)


@pytest.fixture(scope="module")
def prompt_ids(model):
    import numpy as np
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model[0])
    n_plain = len(tok) - len(tok.all_special_ids)   # BPE pieces only, no special token
    rng = np.random.default_rng(0)
    return [tok.bos_token_id] + [int(x) for x in rng.integers(0, n_plain, N_TOKENS - 1)]


@pytest.fixture(scope="module")
def reference(model, prompt_ids):
    import torch
    from transformers import Llama4ForCausalLM

    m = Llama4ForCausalLM.from_pretrained(model[0], dtype=torch.float32, attn_implementation="sdpa").eval()
    assert m.config.attention_chunk_size == CHUNK
    with torch.no_grad():
        return m(input_ids=torch.tensor([prompt_ids]), use_cache=False).logits[0].numpy()


@pytest.mark.parametrize("swa_full", [True, False], ids=["full-cache", "chunked-cache"])
def test_logits_past_the_chunk_match_transformers(model, prompt_ids, reference, swa_full):
    import llama_cpp
    import numpy as np

    from tests.kit.llama_helpers import all_logits, load_llama

    llm = load_llama(model[1], n_ctx=N_TOKENS + 16, logits_all=True, f32_cache=True, swa_full=swa_full,
                     n_batch=N_UBATCH, n_ubatch=N_UBATCH)
    try:
        got = all_logits(llm, prompt_ids)
        mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
        oldest = llama_cpp.llama_memory_seq_pos_min(mem, 0)   # of the chunked layers' cache
    finally:
        llm.close()
    # the chunked cache really is a window: its oldest positions were evicted
    assert oldest == (0 if swa_full else N_TOKENS - (CHUNK + N_UBATCH))
    diff = np.abs(got - reference)
    top1 = got.argmax(1) == reference.argmax(1)
    mode = "full" if swa_full else "chunked"
    print(f"\n{mode} cache: max|Δ| {diff.max():.3g} (before {CHUNK}: {diff[:CHUNK].max():.3g}, "
          f"after: {diff[CHUNK:].max():.3g}); top-1 {top1.mean():.4f} (after {CHUNK}: {top1[CHUNK:].mean():.4f})")
    assert diff[CHUNK:].max() <= TOL_F32, f"{mode}: logits past the chunk differ by {diff[CHUNK:].max()}"
    assert diff.max() <= TOL_F32
    assert top1.mean() >= 0.99 and top1[CHUNK:].mean() >= 0.99
