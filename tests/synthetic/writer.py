"""Header-only GGUF files with the exact tensor inventory of the real Llama models.

`write_synthetic(spec, path)` writes a GGUF whose header (metadata, tokenizer arrays of the
real sizes, tensor infos) is what llama.cpp's converter + `llama-quantize Q4_K_M` produce,
and whose tensor data is a hole: the file is extended with truncate(), so a 243 GB
Maverick costs a few MB of disk. Nothing here loads in llama.cpp (the data is zeros); it
is for the planner, `show` and the header reader.

Shapes (checked against transformers' Llama4TextConfig defaults, which are Scout's, and the
published config.json of each model):
- Llama 3.2 1B: hidden 2048, 16 layers, 32/8 heads (head_dim 64), FFN 8192, vocab 128256, tied.
- Llama 3.2 3B: hidden 3072, 28 layers, 24/8 heads (head_dim 128), FFN 8192, tied.
- Llama 3.3 70B: hidden 8192, 80 layers, 64/8 heads, FFN 28672, vocab 128256, untied.
- Llama 4 Scout: hidden 5120, 48 layers, 40/8 heads, head_dim 128, 16 routed experts of
  FFN 8192 + a shared expert (FFN 8192) in every layer, vocab 202048, untied.
- Llama 4 Maverick: as Scout, but 128 routed experts on the odd layers
  (interleave_moe_layer_step 2: layers 1, 3, ... 47) and a dense FFN of 16384 on the even
  layers; no rope_scaling, hence no rope_freqs tensor.
The Q4_K_M mix follows llama.cpp's llama_tensor_get_type: Q4_K by default; Q6_K for
`output` (and a tied `token_embd`); Q6_K for `attn_v` and every `ffn_down*` on the
"more bits" layers (i < n/8, i >= 7n/8, (i - n/8) % 3 == 2); 70B's other `attn_v` are Q5_K
(its LLM_TYPE_70B rule); norms, rope_freqs and the router `ffn_gate_inp` stay F32.
The parameter counts this gives equal llama.cpp's own figures for the real files
(1,235,814,432 / 3,212,749,888 / 70,553,706,560 / 107,769,861,184 / 400,711,848,960).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

F32, Q4_K, Q5_K, Q6_K = 0, 12, 13, 14
_TYPE_SIZES = {0: (1, 4), 1: (1, 2), 8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144),
               13: (256, 176), 14: (256, 210),
               30: (1, 2)}


@dataclass
class ModelSpec:
    key: str
    name: str
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    vocab: int
    tied: bool
    rope_freqs: bool
    context_length: int
    n_merges: int
    pre: str
    head_dim: int | None = None
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    moe_step: int = 1
    shared_expert: bool = False
    split: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_embd_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def is_moe_layer(self, i: int) -> bool:
        return self.n_expert > 0 and (i + 1) % self.moe_step == 0


SPECS: dict[str, ModelSpec] = {
    "llama3.2-1b": ModelSpec("llama3.2-1b", "Llama 3.2 1B Instruct", "llama", 2048, 16, 32, 8, 8192,
                             128256, True, True, 131072, 280147, "llama-bpe"),
    "llama3.2-3b": ModelSpec("llama3.2-3b", "Llama 3.2 3B Instruct", "llama", 3072, 28, 24, 8, 8192,
                             128256, True, True, 131072, 280147, "llama-bpe"),
    "llama3.3-70b": ModelSpec("llama3.3-70b", "Llama 3.3 70B Instruct", "llama", 8192, 80, 64, 8, 28672,
                              128256, False, True, 131072, 280147, "llama-bpe"),
    "llama4-scout": ModelSpec("llama4-scout", "Llama 4 Scout 17B 16E Instruct", "llama4", 5120, 48, 40, 8,
                              16384, 202048, False, True, 10485760, 439802, "llama4", head_dim=128,
                              n_expert=16, n_expert_used=1, n_ff_exp=8192, moe_step=1,
                              shared_expert=True, split=2),
    "llama4-maverick": ModelSpec("llama4-maverick", "Llama 4 Maverick 17B 128E Instruct", "llama4", 5120,
                                 48, 40, 8, 16384, 202048, False, False, 1048576, 439802, "llama4",
                                 head_dim=128, n_expert=128, n_expert_used=1, n_ff_exp=8192, moe_step=2,
                                 shared_expert=True, split=5),
}


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_inventory(spec: ModelSpec) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape in GGUF order, ggml type) of every tensor, at Q4_K_M."""
    e, hd = spec.n_embd, spec.n_embd_head
    q_dim, kv_dim = spec.n_head * hd, spec.n_head_kv * hd
    out: list[tuple[str, tuple[int, ...], int]] = []
    out.append(("token_embd.weight", (e, spec.vocab), Q6_K if spec.tied else Q4_K))
    if spec.rope_freqs:
        out.append(("rope_freqs.weight", (hd // 2,), F32))
    out.append(("output_norm.weight", (e,), F32))
    if not spec.tied:
        out.append(("output.weight", (e, spec.vocab), Q6_K))
    n = spec.n_layer
    is_70b = spec.arch == "llama" and n == 80 and spec.n_head != spec.n_head_kv
    for i in range(n):
        more = _more_bits(i, n)
        p = f"blk.{i}."
        v_type = Q6_K if more else (Q5_K if is_70b else Q4_K)
        down = Q6_K if more else Q4_K
        out += [
            (p + "attn_norm.weight", (e,), F32),
            (p + "attn_q.weight", (e, q_dim), Q4_K),
            (p + "attn_k.weight", (e, kv_dim), Q4_K),
            (p + "attn_v.weight", (e, kv_dim), v_type),
            (p + "attn_output.weight", (q_dim, e), Q4_K),
            (p + "ffn_norm.weight", (e,), F32),
        ]
        if spec.is_moe_layer(i):
            x, f = spec.n_expert, spec.n_ff_exp
            out += [
                (p + "ffn_gate_inp.weight", (e, x), F32),
                (p + "ffn_gate_exps.weight", (e, f, x), Q4_K),
                (p + "ffn_up_exps.weight", (e, f, x), Q4_K),
                (p + "ffn_down_exps.weight", (f, e, x), down),
            ]
            if spec.shared_expert:
                out += [
                    (p + "ffn_gate_shexp.weight", (e, f), Q4_K),
                    (p + "ffn_up_shexp.weight", (e, f), Q4_K),
                    (p + "ffn_down_shexp.weight", (f, e), down),
                ]
        else:
            out += [
                (p + "ffn_gate.weight", (e, spec.n_ff), Q4_K),
                (p + "ffn_up.weight", (e, spec.n_ff), Q4_K),
                (p + "ffn_down.weight", (spec.n_ff, e), down),
            ]
    return out


def nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    n = 1
    for d in shape:
        n *= d
    block, size = _TYPE_SIZES[ggml_type]
    assert n % block == 0
    return n // block * size


def metadata(spec: ModelSpec, tokenizer: bool = True) -> list[tuple[str, str, Any]]:
    """(key, kind, value) in the order a converter writes them. Kinds: u32 f32 str arr_str
    arr_i32 arr_f32 u16 i32."""
    a = spec.arch
    kv: list[tuple[str, str, Any]] = [
        ("general.architecture", "str", a),
        ("general.type", "str", "model"),
        ("general.name", "str", spec.name),
        ("general.license", "str", "llama4" if a == "llama4" else "llama3.2"),
        ("general.file_type", "u32", 15),
        ("general.quantization_version", "u32", 2),
        (f"{a}.block_count", "u32", spec.n_layer),
        (f"{a}.context_length", "u32", spec.context_length),
        (f"{a}.embedding_length", "u32", spec.n_embd),
        (f"{a}.feed_forward_length", "u32", spec.n_ff),
        (f"{a}.attention.head_count", "u32", spec.n_head),
        (f"{a}.attention.head_count_kv", "u32", spec.n_head_kv),
        (f"{a}.rope.freq_base", "f32", 500000.0),
        (f"{a}.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        (f"{a}.attention.key_length", "u32", spec.n_embd_head),
        (f"{a}.attention.value_length", "u32", spec.n_embd_head),
        (f"{a}.vocab_size", "u32", spec.vocab),
        (f"{a}.rope.dimension_count", "u32", spec.n_embd_head),
    ]
    if spec.n_expert:
        kv += [
            (f"{a}.expert_count", "u32", spec.n_expert),
            (f"{a}.expert_used_count", "u32", spec.n_expert_used),
            (f"{a}.expert_feed_forward_length", "u32", spec.n_ff_exp),
            (f"{a}.interleave_moe_layer_step", "u32", spec.moe_step),
        ]
    kv += [("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", spec.pre)]
    if tokenizer:
        kv += [
            ("tokenizer.ggml.tokens", "arr_str", _Tokens(spec.vocab)),
            ("tokenizer.ggml.token_type", "arr_i32", spec.vocab),
            ("tokenizer.ggml.merges", "arr_str", _Merges(spec.n_merges)),
        ]
    kv += [
        ("tokenizer.ggml.bos_token_id", "u32", 128000 if a == "llama" else 200000),
        ("tokenizer.ggml.eos_token_id", "u32", 128009 if a == "llama" else 200008),
        ("tokenizer.chat_template", "str", "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    ]
    kv += list(spec.extra.items())  # type: ignore[arg-type]
    return kv


class _Tokens:
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return (f"tok{i}" for i in range(self.n))


class _Merges:
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return (f"a{i} b{i}" for i in range(self.n))


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv_bytes(key: str, kind: str, value: Any) -> bytes:
    out = [_s(key)]
    if kind == "u32":
        out.append(struct.pack("<II", 4, value))
    elif kind == "u16":
        out.append(struct.pack("<IH", 2, value))
    elif kind == "i32":
        out.append(struct.pack("<Ii", 5, value))
    elif kind == "f32":
        out.append(struct.pack("<If", 6, value))
    elif kind == "str":
        out.append(struct.pack("<I", 8) + _s(value))
    elif kind == "arr_str":
        items = [_s(x) for x in value]
        out.append(struct.pack("<IIQ", 9, 8, len(items)))
        out.extend(items)
    elif kind == "arr_i32":
        out.append(struct.pack("<IIQ", 9, 5, value) + struct.pack("<i", 1) * value)
    else:
        raise ValueError(kind)
    return b"".join(out)


def _write_part(path: Path, kvs: list[tuple[str, str, Any]],
                tensors: list[tuple[str, tuple[int, ...], int]], alignment: int = 32) -> int:
    infos = []
    offset = 0
    for name, shape, ttype in tensors:
        infos.append(_s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
                     + struct.pack("<IQ", ttype, offset))
        offset += nbytes(shape, ttype)
        offset = (offset + alignment - 1) // alignment * alignment
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    body = b"".join(_kv_bytes(*kv) for kv in kvs) + b"".join(infos)
    data_start = (len(header) + len(body) + alignment - 1) // alignment * alignment
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(body)
        fh.truncate(data_start + offset)  # a hole: no blocks on disk
    return data_start + offset


def write_synthetic(spec: ModelSpec | str, path: Path, *, tokenizer: bool = True,
                    split: int | None = None) -> list[Path]:
    """Write the model's header-only GGUF at `path` (split into parts named like
    llama.cpp's gguf-split when split > 1; `path` then names the stem). Returns the parts."""
    if isinstance(spec, str):
        spec = SPECS[spec]
    tensors = tensor_inventory(spec)
    kvs = metadata(spec, tokenizer=tokenizer)
    split = spec.split if split is None else split
    path = Path(path)
    if split <= 1:
        _write_part(path, kvs, tensors)
        return [path]
    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    per = (len(tensors) + split - 1) // split
    parts = []
    for i in range(split):
        chunk = tensors[i * per:(i + 1) * per]
        split_kv = [("split.no", "u16", i), ("split.count", "u16", split),
                    ("split.tensors.count", "i32", len(tensors))]
        part = path.with_name(f"{stem}-{i + 1:05d}-of-{split:05d}.gguf")
        _write_part(part, (kvs + split_kv) if i == 0 else split_kv, chunk)
        parts.append(part)
    return parts


def expected_totals(spec: ModelSpec | str) -> tuple[int, int]:
    """(parameters, tensor bytes) of the model at Q4_K_M, from the inventory."""
    if isinstance(spec, str):
        spec = SPECS[spec]
    inv = tensor_inventory(spec)
    params = 0
    for _, shape, _ in inv:
        n = 1
        for d in shape:
            n *= d
        params += n
    return params, sum(nbytes(s, t) for _, s, t in inv)
