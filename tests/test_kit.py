"""The tiny-model kit builds checkpoints that transformers loads and tokenizers that
round-trip text, deterministically, in every variant the other tests rely on."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.kit.checkpoint import load_reference, reference_logits

TEXTS = [
    "Hello, world! It's a llama.",
    "Café naïve Zürich — déjà vu",
    "日本語のテキスト 你好，世界",
    "emoji 🦙🚀 👍🏽 ❤️",
    "digits 1234567 3.14159",
    "spaces    and\n\n\nnewlines\t\ttabs  ",
    "CamelCaseWords they'll we're",
]


def test_default_checkpoint_loads_in_transformers(tiny_checkpoint):
    model = load_reference(tiny_checkpoint)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (256, 2, 4, 2, 512)
    assert not cfg.tie_word_embeddings
    logits = reference_logits(model, [cfg.bos_token_id, 10, 20, 30])
    assert logits.shape == (4, cfg.vocab_size)
    # std 0.05 weights: logits spread well beyond a near-uniform distribution
    assert logits.std() > 0.3


def test_checkpoint_files_look_like_metas(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"] is None
    assert isinstance(cfg["eos_token_id"], list) and len(cfg["eos_token_id"]) == 3
    tok_cfg = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert "<|start_header_id|>" in tok_cfg["chat_template"]


@pytest.mark.slow
def test_variants_tied_scaled_bf16(tiny_checkpoint_factory):
    import torch

    ckpt = tiny_checkpoint_factory(tied=True, rope_scaling=True, dtype="bfloat16")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "bfloat16"
    assert cfg["rope_scaling"]["rope_type"] == "llama3"
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert "lm_head.weight" not in keys  # tied: only the embedding is stored
    model = load_reference(ckpt)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.rope_parameters["rope_type"] == "llama3"


def test_tokenizer_round_trips_text(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert 300 <= len(tok) <= 1000
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    # special tokens are single tokens, and the chat template renders Llama 3's shape
    assert len(tok("<|eot_id|>", add_special_tokens=False)["input_ids"]) == 1
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tokenizer_merges_compress_english(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = "The quick brown fox jumps over the lazy dog."
    assert len(tok(text, add_special_tokens=False)["input_ids"]) < len(text) / 2


def test_build_is_deterministic(tmp_path):
    from tests.kit.checkpoint import build_tiny_checkpoint

    digests = []
    for name in ("a", "b"):
        folder = build_tiny_checkpoint(tmp_path / name)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in folder.iterdir() if p.suffix in (".json", ".safetensors")})
    assert digests[0] == digests[1]
