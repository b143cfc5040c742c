"""A synthetic Llama-shaped GGUF with random weights, for the benchmarks in this folder.

    python benchmarks/synth_gguf.py OUT.gguf [--hidden 1024 --layers 16 --ffn 2816 --type Q8_0]

The weights are random (normal, std 0.02), the vocabulary is a SentencePiece-style list of
placeholder pieces with byte fallback: enough for llama.cpp to load and generate, with no
tokenizer effects on speed. Never used by the tests (they use tests/kit's tiny models)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def build_llama_gguf(out: Path, *, hidden: int = 1024, layers: int = 16, ffn: int = 2816,
                     heads: int = 16, kv_heads: int = 4, vocab: int = 32000, ctx: int = 4096,
                     qtype: str = "Q8_0", seed: int = 0) -> Path:
    """Write a Llama-architecture GGUF of the given shape; return its path."""
    import numpy as np
    import gguf

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    head_dim = hidden // heads

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(f"synthetic-llama-h{hidden}-l{layers}")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    ftype = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2}.get(qtype, 7)
    w.add_file_type(ftype)

    # A SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte pieces, then placeholders.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    n_rest = vocab - len(tokens)
    tokens += [f"\u2581t{i}" for i in range(n_rest)]
    types += [1] * n_rest
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(n_rest)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(rows: int, cols: int):
        a = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        if qt == gguf.GGMLQuantizationType.F32:
            return a, None
        if qt == gguf.GGMLQuantizationType.F16:
            return a.astype(np.float16), None
        return gguf.quants.quantize(a, qt), qt

    def add(name: str, arr_qt) -> None:
        arr, raw = arr_qt
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)

    ones = lambda n: (np.ones(n, dtype=np.float32), None)  # noqa: E731
    add("token_embd.weight", mat(vocab, hidden))
    add("output_norm.weight", ones(hidden))
    add("output.weight", mat(vocab, hidden))
    kv = kv_heads * head_dim
    for i in range(layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", ones(hidden))
        add(p + "attn_q.weight", mat(hidden, hidden))
        add(p + "attn_k.weight", mat(kv, hidden))
        add(p + "attn_v.weight", mat(kv, hidden))
        add(p + "attn_output.weight", mat(hidden, hidden))
        add(p + "ffn_norm.weight", ones(hidden))
        add(p + "ffn_gate.weight", mat(ffn, hidden))
        add(p + "ffn_up.weight", mat(ffn, hidden))
        add(p + "ffn_down.weight", mat(hidden, ffn))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--type", default="Q8_0")
    a = ap.parse_args()
    t0 = time.perf_counter()
    path = build_llama_gguf(a.out, hidden=a.hidden, layers=a.layers, ffn=a.ffn, vocab=a.vocab,
                            qtype=a.type)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
