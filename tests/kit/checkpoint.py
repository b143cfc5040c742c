"""Tiny Llama-3-style Hugging Face checkpoints, built at test time without any network.

`build_tiny_checkpoint(out_dir, ...)` writes what Meta's repositories hold for a Llama 3.x
model: config.json (in Meta's style: `rope_theta` and `rope_scaling` at the top level,
`torch_dtype`, several EOS ids), generation_config.json, the weights as safetensors (one
file, or shards with model.safetensors.index.json) and a real BPE tokenizer
(tests/kit/tokenizer.py).

Weights are random, deterministic by seed, drawn with std 0.05 (not transformers' 0.02:
with 0.02 attention is nearly uniform and a wrong q/k permutation moves the logits by only
~0.05, so parity tests would lose their teeth). RMSNorm weights are drawn around 1 so that
swapping two norms is visible too.

Variants: tied embeddings on/off, Llama 3.1-style `rope_scaling` (`rope_type: llama3`)
on/off, float32/bfloat16/float16 weights, the chat template in tokenizer_config.json or in
chat_template.jinja, config.json in Meta's or transformers 5's style."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.kit.tokenizer import LLAMA3_SPECIAL_TOKENS, build_tokenizer

# The tiny model uses a short original context for its llama3 rope scaling so that the
# scaling changes positions inside a 100-token prompt (with Meta's 8192 it would not, and a
# converter that forgot rope_freqs would still pass).
TINY_ROPE_SCALING = {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 64,
    "rope_type": "llama3",
}


@dataclass(frozen=True)
class TinySpec:
    tied: bool = False
    rope_scaling: bool = False
    dtype: str = "float32"             # float32 | bfloat16 | float16
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    std: float = 0.05
    seed: int = 1234
    bpe_vocab_size: int = 500
    template_in: str = "tokenizer_config"   # tokenizer_config | jinja
    config_style: str = "meta"              # meta | transformers
    max_shard_size: str | None = None       # e.g. "200KB" to write several shards
    train_steps: int = 0                    # > 0: train on the kit's corpus (a decisive model)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _special_id(n_bpe: int, token: str) -> int:
    return n_bpe + LLAMA3_SPECIAL_TOKENS.index(token)


def build_tiny_checkpoint(out_dir: Path, spec: TinySpec | None = None, **overrides) -> Path:
    """Build a checkpoint folder for `spec` (or TinySpec(**overrides)); return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = spec or TinySpec(**overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab_size = build_tokenizer(out_dir, bpe_vocab_size=spec.bpe_vocab_size, template_in=spec.template_in)
    n_bpe = vocab_size - len(LLAMA3_SPECIAL_TOKENS)
    bos = _special_id(n_bpe, "<|begin_of_text|>")
    eos = [_special_id(n_bpe, t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    head_dim = spec.hidden_size // spec.num_attention_heads

    rope_params = {"rope_theta": spec.rope_theta, "rope_type": "default"}
    if spec.rope_scaling:
        rope_params = {"rope_theta": spec.rope_theta, **TINY_ROPE_SCALING}
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.rms_norm_eps,
        initializer_range=spec.std,
        tie_word_embeddings=spec.tied,
        bos_token_id=bos,
        eos_token_id=eos,
        rope_parameters=rope_params,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(spec.std * torch.randn(param.shape, generator=gen))
    model.tie_weights()
    if spec.train_steps:
        _train(model, out_dir, spec)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]
    model = model.to(dtype)
    save_kwargs = {"safe_serialization": True}
    if spec.max_shard_size:
        save_kwargs["max_shard_size"] = spec.max_shard_size
    model.save_pretrained(out_dir, **save_kwargs)

    if spec.config_style == "meta":
        meta = {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": spec.hidden_size,
            "initializer_range": spec.std,
            "intermediate_size": spec.intermediate_size,
            "max_position_embeddings": spec.max_position_embeddings,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": spec.num_attention_heads,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_key_value_heads": spec.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": spec.rms_norm_eps,
            "rope_scaling": dict(TINY_ROPE_SCALING) if spec.rope_scaling else None,
            "rope_theta": spec.rope_theta,
            "tie_word_embeddings": spec.tied,
            "torch_dtype": spec.dtype,
            "transformers_version": "4.45.0",
            "use_cache": True,
            "vocab_size": vocab_size,
        }
        (out_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    elif spec.config_style != "transformers":
        raise ValueError(f"config_style must be 'meta' or 'transformers', not {spec.config_style!r}")

    generation = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return out_dir


def training_text() -> str:
    """What a `train_steps` model learns: the kit's corpus, once."""
    from tests.kit.tokenizer import corpus_lines

    return "\n".join(corpus_lines(1))


def _train(model, tok_dir: Path, spec: TinySpec) -> None:
    """A few steps of AdamW on the corpus. A random model's next-token logits are nearly
    tied (top-2 gaps below the rounding error of bf16 or Q8_0 at a few per cent of
    positions); a trained one is decisive on its training text, as a real model is on
    ordinary text, so greedy top-1 agreement can be checked strictly."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    data = torch.tensor(tok.encode(training_text()).ids, dtype=torch.long)
    seq = min(128, len(data) - 1)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(spec.train_steps):
        starts = torch.randint(0, len(data) - seq, (4,), generator=gen)
        batch = torch.stack([data[s:s + seq] for s in starts])
        loss = model(batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def load_reference(ckpt_dir: Path):
    """transformers' LlamaForCausalLM on the checkpoint, in float32, eval mode: the
    independent reference that conversions are checked against."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32)
    model.eval()
    return model


def reference_logits(model, ids: list[int]):
    """float32 logits of every position, shape (len(ids), vocab), as numpy."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long))
    return out.logits[0].float().numpy()


def build_large_checkpoint(out_dir: Path, *, hidden: int = 1024, intermediate: int = 16384,
                           layers: int = 2, heads: int = 8, kv_heads: int = 4, dtype: str = "float32",
                           shards: int = 2, seed: int = 7) -> Path:
    """A Llama 3 checkpoint of a few hundred MB, written with numpy alone (fast, no torch):
    same files and naming as build_tiny_checkpoint, random weights, for memory and speed
    measurements of the converter (not for parity: transformers is never run on it).
    Defaults: 2 layers of hidden 1024 and FFN 16384 in float32, about 400 MiB, whose
    largest tensors (the FFN matrices) are 64 MiB each."""
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out_dir)
    n_bpe = vocab - len(LLAMA3_SPECIAL_TOKENS)
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    st_dtype, itemsize = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}[dtype]
    rng = np.random.default_rng(seed)
    names = list(shapes)
    groups = [names[i::shards] for i in range(shards)]
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in group:
            n = int(np.prod(shapes[name])) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out_dir / fname, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            for name in group:
                shape = shapes[name]
                # write big tensors in row blocks so that building stays light on memory too
                rows_per = max(1, (8 << 20) // (4 * int(np.prod(shape[1:])) if len(shape) > 1 else 1))
                total_rows = shape[0]
                for r0 in range(0, total_rows, rows_per):
                    r1 = min(total_rows, r0 + rows_per)
                    block = rng.standard_normal((r1 - r0, *shape[1:]), dtype=np.float32) * 0.05
                    if len(shape) == 1:
                        block = block + 1.0
                    if dtype == "bfloat16":
                        block = (block.view(np.uint32) >> 16).astype(np.uint16)
                    fh.write(block.tobytes())
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": dict(TINY_ROPE_SCALING),
        "tie_word_embeddings": False, "torch_dtype": dtype, "vocab_size": vocab,
        "bos_token_id": n_bpe + LLAMA3_SPECIAL_TOKENS.index("<|begin_of_text|>"),
        "eos_token_id": n_bpe + LLAMA3_SPECIAL_TOKENS.index("<|eot_id|>"),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
