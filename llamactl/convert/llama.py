"""Llama 3.x (config.json `model_type: llama`) -> GGUF architecture `llama`.

What llama.cpp needs beyond copying tensors:
- q_proj/k_proj rows reordered: Hugging Face's layout rotates the two halves of each head
  (rotate_half), llama.cpp's rotates adjacent pairs; k uses the KV head count.
- `rope_freqs`: per-dimension frequency divisors computed from `rope_scaling` when
  `rope_type` is `llama3` (Llama 3.1, 3.2, 3.3).
- Tied embeddings (Llama 3.2 1B/3B): no `output` tensor; llama.cpp reuses token_embd.
- The tokenizer as `gpt2` BPE with the `llama-bpe` pre-tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamactl.convert import common
from llamactl.errors import LlamactlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

ARCH = "llama"
PRE_TOKENIZER = "llama-bpe"
# tensors some checkpoints carry that llama.cpp does not use
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def rope_config(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from Meta-style keys (`rope_theta`, `rope_scaling` at the
    top) or transformers 5's `rope_parameters`."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    theta = config.get("rope_theta")
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        if params.get("rope_type", params.get("type", "default")) != "default":
            scaling = params
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    return float(theta if theta is not None else 10000.0), scaling


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]) -> "np.ndarray":
    """The divisor of each rotary frequency under Llama 3.1's scaling: 1 for short
    wavelengths, `factor` for long ones, a smooth blend in between."""
    import numpy as np

    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / freqs
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    out = np.empty_like(freqs)
    for i, w in enumerate(wavelen):
        if w < high_wavelen:
            out[i] = 1.0
        elif w > low_wavelen:
            out[i] = factor
        else:
            smooth = (old_ctx / w - low) / (high - low)
            out[i] = 1.0 / ((1 - smooth) / factor + smooth)
    return out.astype(np.float32)


def rope_row_permutation(n_rows: int, n_heads: int) -> "np.ndarray":
    """Output row i of q/k (llama.cpp's adjacent-pair layout) is source row perm[i] (the
    Hugging Face half-split layout)."""
    import numpy as np

    head_dim = n_rows // n_heads
    half = head_dim // 2
    h = np.arange(n_heads)[:, None, None]
    j = np.arange(half)[None, :, None]
    t = np.arange(2)[None, None, :]
    return (h * head_dim + t * half + j).reshape(-1)


class Hparams:
    def __init__(self, config: dict[str, Any]):
        def need(key: str) -> int:
            value = config.get(key)
            if not isinstance(value, int) or value <= 0:
                raise LlamactlError(f"config.json lacks a valid `{key}` ({value!r})")
            return value

        self.hidden = need("hidden_size")
        self.n_layer = need("num_hidden_layers")
        self.n_head = need("num_attention_heads")
        self.n_head_kv = int(config.get("num_key_value_heads") or self.n_head)
        self.ff = need("intermediate_size")
        self.vocab = need("vocab_size")
        self.head_dim = int(config.get("head_dim") or self.hidden // self.n_head)
        self.ctx = int(config.get("max_position_embeddings") or 8192)
        self.eps = float(config.get("rms_norm_eps", 1e-5))
        self.tied = bool(config.get("tie_word_embeddings", False))
        self.theta, self.scaling = rope_config(config)
        if self.n_head % self.n_head_kv:
            raise LlamactlError(f"config.json: num_attention_heads {self.n_head} is not a multiple of "
                                f"num_key_value_heads {self.n_head_kv}")
        if self.scaling is not None:
            rope_type = self.scaling.get("rope_type", self.scaling.get("type"))
            if rope_type not in ("llama3", "linear"):
                raise LlamactlError(f"config.json: rope_scaling type {rope_type!r} is not supported for Llama "
                                    "conversion (llama3 and linear are)")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise LlamactlError("config.json: attention or MLP biases are not supported for Llama 3 conversion")


def _expected(hp: Hparams) -> dict[str, tuple[int, ...]]:
    q = hp.n_head * hp.head_dim
    kv = hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (hp.vocab, hp.hidden),
        "model.norm.weight": (hp.hidden,),
    }
    if not hp.tied:
        shapes["lm_head.weight"] = (hp.vocab, hp.hidden)
    for i in range(hp.n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hp.hidden,),
            p + "post_attention_layernorm.weight": (hp.hidden,),
            p + "self_attn.q_proj.weight": (q, hp.hidden),
            p + "self_attn.k_proj.weight": (kv, hp.hidden),
            p + "self_attn.v_proj.weight": (kv, hp.hidden),
            p + "self_attn.o_proj.weight": (hp.hidden, q),
            p + "mlp.gate_proj.weight": (hp.ff, hp.hidden),
            p + "mlp.up_proj.weight": (hp.ff, hp.hidden),
            p + "mlp.down_proj.weight": (hp.hidden, hp.ff),
        })
    return shapes


def check_tensors(ckpt: common.Checkpoint, hp: Hparams) -> dict[str, tuple[int, ...]]:
    """Every tensor config.json implies is present with its shape, and nothing unknown is
    left over. Raises a one-line LlamactlError naming the first mismatch."""
    expected = _expected(hp)
    for name, shape in expected.items():
        t = ckpt.tensors.get(name)
        if t is None:
            raise LlamactlError(f"the checkpoint does not match its config.json: tensor {name} is missing",
                                hint="check that config.json and the *.safetensors files belong together")
        if t.shape != shape:
            raise LlamactlError(f"the checkpoint does not match its config.json: {name} has shape "
                                f"{list(t.shape)}, config.json implies {list(shape)}",
                                hint="check that config.json and the *.safetensors files belong together")
    extra = [n for n in ckpt.tensors if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
             and not (hp.tied and n == "lm_head.weight")]
    if extra:
        raise LlamactlError(f"the checkpoint does not match its config.json: {len(extra)} unexpected "
                            f"tensor(s), first {extra[0]}",
                            hint="check num_hidden_layers in config.json")
    return expected


def plan(ckpt: common.Checkpoint, outtype: str, *, permute_qk: bool = True,
         write_rope_freqs: bool = True) -> tuple[Hparams, list[common.TensorJob]]:
    """The output tensors in order. `permute_qk` and `write_rope_freqs` exist so that tests
    can build deliberately broken files and show the parity check catches them."""
    import gguf

    hp = Hparams(ckpt.config)
    expected = check_tensors(ckpt, hp)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.n_layer)
    jobs: list[common.TensorJob] = []
    if write_rope_freqs and hp.scaling is not None:
        rope_type = hp.scaling.get("rope_type", hp.scaling.get("type"))
        if rope_type == "llama3":
            factors = llama3_rope_factors(hp.theta, hp.head_dim, hp.scaling)
            jobs.append(common.array_job(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors))
    q_perm = rope_row_permutation(hp.n_head * hp.head_dim, hp.n_head) if permute_qk else None
    k_perm = rope_row_permutation(hp.n_head_kv * hp.head_dim, hp.n_head_kv) if permute_qk else None
    for name in expected:
        t = ckpt.tensors[name]
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:  # pragma: no cover - the map knows every Llama tensor
            raise LlamactlError(f"no GGUF name for tensor {name}")
        perm = None
        if name.endswith("self_attn.q_proj.weight"):
            perm = q_perm
        elif name.endswith("self_attn.k_proj.weight"):
            perm = k_perm
        jobs.append(common.source_job(t, gguf_name, common.ggml_type_for(outtype, len(t.shape)), perm))
    return hp, jobs


def convert(ckpt: common.Checkpoint, out_path: Path, outtype: str, progress: common.Progress | None = None,
            *, name: str | None = None, permute_qk: bool = True, write_rope_freqs: bool = True) -> dict[str, Any]:
    hp, jobs = plan(ckpt, outtype, permute_qk=permute_qk, write_rope_freqs=write_rope_freqs)
    tok = common.load_bpe_tokenizer(ckpt.path, hp.vocab, config=ckpt.config)
    n_params = sum(j.n_elements for j in jobs)   # as llama.cpp counts (rope_freqs included)

    def metadata(writer: Any) -> None:
        common.write_general(writer, ckpt.path, ckpt.config, outtype, name=name, n_params=n_params)
        writer.add_vocab_size(hp.vocab)
        writer.add_context_length(hp.ctx)
        writer.add_embedding_length(hp.hidden)
        writer.add_block_count(hp.n_layer)
        writer.add_feed_forward_length(hp.ff)
        writer.add_head_count(hp.n_head)
        writer.add_head_count_kv(hp.n_head_kv)
        writer.add_rope_dimension_count(hp.head_dim)
        writer.add_rope_freq_base(hp.theta)
        writer.add_layer_norm_rms_eps(hp.eps)
        if hp.head_dim != hp.hidden // hp.n_head:
            writer.add_key_length(hp.head_dim)
            writer.add_value_length(hp.head_dim)
        if hp.scaling is not None:
            rope_type = hp.scaling.get("rope_type", hp.scaling.get("type"))
            if rope_type == "linear":
                import gguf

                writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                writer.add_rope_scaling_factor(float(hp.scaling["factor"]))
        common.write_tokenizer(writer, tok, PRE_TOKENIZER)

    nbytes = common.write_gguf(out_path, ARCH, metadata, jobs, progress)
    return {
        "architecture": ARCH,
        "n_tensors": len(jobs),
        "n_params": n_params,
        "bytes": nbytes,
        "vocab_size": hp.vocab,
        "tied_embeddings": hp.tied,
        "rope_freqs": any(j.source == "(computed)" for j in jobs),
    }
