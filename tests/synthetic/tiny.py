"""Tiny GGUF models that llama.cpp really loads and runs, written directly with
gguf.GGUFWriter (random weights, a byte-level BPE vocabulary of the 256 bytes plus a few
merges and the Llama 3 special tokens). Two shapes:

- `arch="llama"`: a dense Llama (optionally with Mixtral-style experts: n_expert > 0);
- `arch="llama4"`: Llama 4 MoE layers (router, routed experts, a shared expert), with
  `moe_step` 2 for Maverick-style alternating dense/MoE layers. llama.cpp applies QK norm
  to Llama 4 unless it has exactly 128 experts; it has no weights, so nothing to write.

They exist to check what llama.cpp does with them (tensor placement, KV cache size), not
to produce sensible text."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _byte_chars() -> list[str]:
    """The printable stand-in character of each byte, as GPT-2's byte-level BPE uses."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path: Path, *, arch: str = "llama", n_layer: int = 4, n_embd: int = 256,
                    n_head: int = 4, n_head_kv: int = 2, n_ff: int = 512, n_expert: int = 0,
                    n_expert_used: int = 2, n_ff_exp: int = 256, moe_step: int = 1,
                    n_ctx_train: int = 4096, seed: int = 0, chat_template: str | None = None) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    byte_tokens = _byte_chars()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    merged = ["Ġt", "he", "Ġthe", "in", "an"]
    tokens = byte_tokens + merged + SPECIALS
    types = [1] * (len(byte_tokens) + len(merged)) + [3] * len(SPECIALS)
    vocab = len(tokens)
    bos = tokens.index("<|begin_of_text|>")
    eot = tokens.index("<|eot_id|>")

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_file_type(0)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_vocab_size(vocab)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    if arch == "llama4":
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_interleave_moe_layer_step(moe_step)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama4" if arch == "llama4" else "llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE if chat_template is None else chat_template)

    def t(name: str, *shape: int) -> None:
        # numpy order is the reverse of GGUF's (ne0 last)
        data = rng.normal(0, 0.05, size=tuple(reversed(shape))).astype(np.float32)
        w.add_tensor(name, data)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    hd = n_embd // n_head
    t("token_embd.weight", n_embd, vocab)
    norm("output_norm.weight", n_embd)
    t("output.weight", n_embd, vocab)
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", n_embd)
        t(p + "attn_q.weight", n_embd, n_head * hd)
        t(p + "attn_k.weight", n_embd, n_head_kv * hd)
        t(p + "attn_v.weight", n_embd, n_head_kv * hd)
        t(p + "attn_output.weight", n_head * hd, n_embd)
        norm(p + "ffn_norm.weight", n_embd)
        moe_layer = n_expert > 0 and (arch != "llama4" or (i + 1) % moe_step == 0)
        if moe_layer:
            f = n_ff_exp if arch == "llama4" else n_ff
            t(p + "ffn_gate_inp.weight", n_embd, n_expert)
            t(p + "ffn_gate_exps.weight", n_embd, f, n_expert)
            t(p + "ffn_up_exps.weight", n_embd, f, n_expert)
            t(p + "ffn_down_exps.weight", f, n_embd, n_expert)
            if arch == "llama4":
                t(p + "ffn_gate_shexp.weight", n_embd, n_ff_exp)
                t(p + "ffn_up_shexp.weight", n_embd, n_ff_exp)
                t(p + "ffn_down_shexp.weight", n_ff_exp, n_embd)
        else:
            t(p + "ffn_gate.weight", n_embd, n_ff)
            t(p + "ffn_up.weight", n_embd, n_ff)
            t(p + "ffn_down.weight", n_ff, n_embd)
    path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
