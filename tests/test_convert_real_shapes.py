"""The converter's plan for the real Llama 3.x checkpoints: Meta's config.json and
header-only safetensors shards of the real shapes (sparse files: no data, no disk) give
exactly llama.cpp's tensor inventory for Llama 3.2 1B, 3B and 3.3 70B (names, GGUF shapes;
the inventory in tests/synthetic was checked against llama-bench's headers) and the
published parameter counts. Nothing is converted: no weights exist."""

from __future__ import annotations

import json
import math

import pytest

# Meta's config.json values (meta-llama/Llama-3.2-1B-Instruct, -3B-Instruct, Llama-3.3-70B-Instruct)
REAL = {
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=8192, tie_word_embeddings=True, head_dim=64,
                        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                        params=1_235_814_432, shards=1),
    "llama3.2-3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                        intermediate_size=8192, tie_word_embeddings=True, head_dim=128,
                        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                        params=3_212_749_888, shards=2),
    "llama3.3-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                         intermediate_size=28672, tie_word_embeddings=False,
                         rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                         params=70_553_706_560, shards=30),
}


def _hf_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, ff, heads, kv = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                        cfg["num_key_value_heads"])
    hd = cfg.get("head_dim") or h // heads
    shapes = {"model.embed_tokens.weight": (128256, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (128256, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (heads * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
            p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, heads * hd),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        })
    return shapes


def build_header_only(folder, key: str):
    """config.json + model-0000N-of-0000M.safetensors whose data is a hole."""
    spec = dict(REAL[key])
    params, n_shards = spec.pop("params"), spec.pop("shards")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
           "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "max_position_embeddings": 131072,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "vocab_size": 128256,
           "attention_bias": False, "mlp_bias": False, **spec}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    shapes = _hf_shapes(cfg)
    names = list(shapes)
    weight_map = {}
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        header, offset = {}, 0
        for name in names[k::n_shards]:
            n = math.prod(shapes[name]) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        with open(folder / fname, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.truncate(8 + len(raw) + offset)        # sparse: the weights are a hole
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return params


@pytest.mark.parametrize("key", list(REAL))
def test_plan_matches_llama_cpp_inventory_and_parameter_count(key, tmp_path):
    from llamactl.convert import common, llama
    from tests.synthetic.writer import SPECS, tensor_inventory

    folder = tmp_path / key
    params = build_header_only(folder, key)
    ckpt = common.open_checkpoint(folder)
    assert common.default_outtype(ckpt) == "bf16"
    hp, jobs = llama.plan(ckpt, "bf16")
    got = {j.name: tuple(reversed(j.shape)) for j in jobs}          # GGUF order: ne0 first
    expected = {name: shape for name, shape, _ in tensor_inventory(SPECS[key])}
    assert got == expected
    assert sum(j.n_elements for j in jobs) == params   # llama.cpp counts rope_freqs too
    types = {j.name: j.ggml_type for j in jobs}
    assert types["rope_freqs.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == "BF16"
    # bf16 output of a bf16 checkpoint: the file is the weights' bytes plus the header
    assert sum(j.nbytes for j in jobs if j.ggml_type == "BF16") == sum(t.nbytes for t in ckpt.tensors.values()
                                                                      if len(t.shape) == 2)
