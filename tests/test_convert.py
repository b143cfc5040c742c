"""`convert`: tiny Llama 3 checkpoints become GGUF files llama.cpp loads, with the metadata,
tokenizer and tensors it needs; bad checkpoints fail with one line and leave no file."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.kit.llama_helpers import load_llama, read_meta


def test_tiny_gguf_loads_and_generates(tiny_gguf):
    llm = load_llama(tiny_gguf)
    out = llm.create_completion("The quick brown", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
    assert len(out["choices"][0]["text"]) > 0


def test_metadata_matches_config(tiny_gguf, tiny_checkpoint):
    import gguf

    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    meta, tensors = read_meta(tiny_gguf)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.embedding_length"] == 256
    assert meta["llama.block_count"] == 2
    assert meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.feed_forward_length"] == 512
    assert meta["llama.context_length"] == cfg["max_position_embeddings"]
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    assert meta["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    assert meta["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert "<|start_header_id|>" in meta["tokenizer.chat_template"]
    assert "output.weight" in tensors and "rope_freqs.weight" not in tensors
    assert len(tensors) == 2 + 1 + 2 * 9


def test_special_tokens_are_control_tokens(tiny_gguf, tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    meta, _ = read_meta(tiny_gguf)
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tok)
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(special)
        assert tokens[tid] == special and types[tid] == 3  # CONTROL
    assert types[tok.convert_tokens_to_ids("Ġthe")] == 1   # NORMAL
    assert meta["tokenizer.ggml.bos_token_id"] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert meta["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|eot_id|>")
