"""Llama 4 conversion checked against transformers, the independent reference.

Tiny random Scout-like (every layer MoE, 4 experts, QK norm, llama3 rope scaling) and
Maverick-like (MoE every second layer with dense FFN layers between, 128 experts, no QK
norm) checkpoints are converted and run by the real llama.cpp; their logits over a prompt
of 150+ tokens (4 layers: layer 3 is a NoPE layer) are compared with transformers' float32
forward pass.

Tolerances (max |Δlogit| over all positions and the whole vocabulary), measured here with
an F32 KV cache and 2-4x headroom:
- f32 (float32 source, real top-1 routing): measured ~1e-4 -> 1e-3.
- f16 / bf16 (bfloat16 source, as Meta's checkpoints are, so the weights convert exactly
  and only llama.cpp's reduced-precision arithmetic differs): measured 0.005 / 0.05 ->
  0.02 / 0.1. These use routing to all experts: with top-1 routing the router's choice
  flips at a few near-tied tokens under 16-bit activations (in llama.cpp as in any
  16-bit runtime), which moves those tokens' logits by up to 1-7 and would say nothing
  about the conversion.
- Q8_0 (through llamactl quantize): 0.5.
Broken conversions (gate/up swapped, experts not transposed, Llama 3's q/k permutation)
move the f32 logits by 1.5-3: far outside."""

from __future__ import annotations

import pytest

from tests.kit.llama_helpers import all_logits, load_llama, read_meta

TOL = {"f32": 1e-3, "f16": 0.02, "bf16": 0.1, "Q8_0": 0.5}
N_EXPERTS = {"scout": 4, "maverick": 128}


def _all_experts(variant: str) -> dict:
    return {"dtype": "bfloat16", "text_overrides": (("num_experts_per_tok", N_EXPERTS[variant]),)}


def parity(gguf_path, ckpt, ids, tol):
    """(max |Δ|, raw top-1 agreement, top-1 agreement counting near-ties) of llama.cpp on
    `gguf_path` against transformers on `ckpt`. A near-tie: llama.cpp's pick scores within
    `tol` of transformers' best under transformers' own logits."""
    import numpy as np

    from tests.kit.llama4 import reference_logits

    ref = reference_logits(ckpt, ids)
    llm = load_llama(gguf_path, logits_all=True, f32_cache=True)
    try:
        got = all_logits(llm, ids)
    finally:
        llm.close()
    assert got.shape == ref.shape
    diff = float(np.abs(got - ref).max())
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    raw = float((ref_top == got_top).mean())
    rows = np.arange(len(ids))
    tie = ref[rows, ref_top] - ref[rows, got_top] <= tol
    return diff, raw, float((tie | (ref_top == got_top)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["scout", "maverick"])
def test_f32_logits_match_transformers(variant, llama4_checkpoint_factory, llama4_gguf_factory, llama4_prompt_ids):
    ckpt = llama4_checkpoint_factory(variant)
    ids = llama4_prompt_ids(ckpt)
    assert len(ids) >= 100
    diff, top1, _ = parity(llama4_gguf_factory(variant, "f32"), ckpt, ids, TOL["f32"])
    print(f"\n{variant} f32: max|Δ|={diff:.3g} top1={top1:.3f}")
    assert diff <= TOL["f32"], f"{variant} f32 logits differ by {diff}"
    assert top1 >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "bf16"])
@pytest.mark.parametrize("variant", ["scout", "maverick"])
def test_half_precision_logits_match_transformers(variant, outtype, llama4_checkpoint_factory,
                                                  llama4_gguf_factory, llama4_prompt_ids):
    spec = _all_experts(variant)
    ckpt = llama4_checkpoint_factory(variant, **spec)
    ids = llama4_prompt_ids(ckpt)
    diff, top1, top1_ties = parity(llama4_gguf_factory(variant, outtype, **spec), ckpt, ids, TOL[outtype])
    print(f"\n{variant} {outtype}: max|Δ|={diff:.3g} top1={top1:.3f} (near-ties counted: {top1_ties:.3f})")
    assert diff <= TOL[outtype], f"{variant} {outtype} logits differ by {diff}"
    assert top1_ties >= 0.99
    assert top1 >= (0.99 if outtype == "f16" else 0.97)


@pytest.mark.slow
def test_q8_0_logits_match_transformers(llama4_checkpoint_factory, llama4_gguf_factory, llama4_prompt_ids,
                                        tmp_path):
    from llamactl.quantize import quantize_gguf

    spec = _all_experts("scout")
    ckpt = llama4_checkpoint_factory("scout", **spec)
    q8 = tmp_path / "scout-q8_0.gguf"
    quantize_gguf(llama4_gguf_factory("scout", "f16", **spec), q8, "Q8_0")
    diff, top1, top1_ties = parity(q8, ckpt, llama4_prompt_ids(ckpt), TOL["Q8_0"])
    print(f"\nscout Q8_0: max|Δ|={diff:.3g} top1={top1:.3f} (near-ties counted: {top1_ties:.3f})")
    assert diff <= TOL["Q8_0"]
    assert top1_ties >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("variant,broken", [
    ("scout", {"expert_layout": "swap_gate_up"}),
    ("scout", {"expert_layout": "untransposed"}),
    ("scout", {"permute_qk": True}),
    ("maverick", {"expert_layout": "swap_gate_up"}),
    ("maverick", {"expert_layout": "untransposed"}),
])
def test_wrong_layouts_fail_the_parity_check(variant, broken, llama4_checkpoint_factory, llama4_prompt_ids,
                                             tmp_path):
    """The check has teeth: each classic mistake moves the logits far past the tolerance."""
    from llamactl.convert import convert_checkpoint

    ckpt = llama4_checkpoint_factory(variant)
    out = tmp_path / "broken.gguf"
    convert_checkpoint(ckpt, out, outtype="f32", **broken)
    diff, top1, _ = parity(out, ckpt, llama4_prompt_ids(ckpt), TOL["f32"])
    print(f"\n{variant} {broken}: max|Δ|={diff:.3g} top1={top1:.3f}")
    assert diff > 100 * TOL["f32"] and diff > 0.5
    assert top1 < 0.95


def test_metadata_and_tensor_layout(llama4_checkpoint_factory, llama4_gguf_factory):
    import json

    for variant in ("scout", "maverick"):
        ckpt = llama4_checkpoint_factory(variant)
        tc = json.loads((ckpt / "config.json").read_text())["text_config"]
        meta, tensors = read_meta(llama4_gguf_factory(variant, "f32"))
        H, E, ff = tc["hidden_size"], tc["num_local_experts"], tc["intermediate_size"]
        assert meta["general.architecture"] == "llama4"
        assert meta["llama4.expert_count"] == E
        assert meta["llama4.expert_used_count"] == tc["num_experts_per_tok"]
        assert meta["llama4.expert_feed_forward_length"] == ff
        assert meta["llama4.feed_forward_length"] == tc["intermediate_size_mlp"]
        assert meta["llama4.interleave_moe_layer_step"] == tc["interleave_moe_layer_step"]
        assert meta["llama4.block_count"] == tc["num_hidden_layers"]
        assert meta["llama4.context_length"] == tc["max_position_embeddings"]
        assert meta["llama4.rope.dimension_count"] == tc["head_dim"]
        assert meta["tokenizer.ggml.pre"] == "llama4"
        step = tc["interleave_moe_layer_step"]
        for i in range(tc["num_hidden_layers"]):
            b = f"blk.{i}."
            if (i + 1) % step == 0:
                # GGUF shapes are ne order: (in, out, experts)
                assert tuple(tensors[b + "ffn_gate_exps.weight"].shape) == (H, ff, E)
                assert tuple(tensors[b + "ffn_up_exps.weight"].shape) == (H, ff, E)
                assert tuple(tensors[b + "ffn_down_exps.weight"].shape) == (ff, H, E)
                assert tuple(tensors[b + "ffn_gate_inp.weight"].shape) == (H, E)
                assert tensors[b + "ffn_gate_inp.weight"].tensor_type.name == "F32"
                for n in ("gate", "up", "down"):
                    assert b + f"ffn_{n}_shexp.weight" in tensors
                assert b + "ffn_gate.weight" not in tensors
            else:
                assert tuple(tensors[b + "ffn_gate.weight"].shape) == (H, tc["intermediate_size_mlp"])
                assert b + "ffn_gate_exps.weight" not in tensors
        # Scout's llama3 rope scaling needs rope_freqs; Maverick has none
        assert ("rope_freqs.weight" in tensors) == (variant == "scout")
        assert not any("vision" in n or "mm." in n for n in tensors)
    # Maverick-like: dense layers 0 and 2, MoE layers 1 and 3
    meta, tensors = read_meta(llama4_gguf_factory("maverick", "f32"))
    assert "blk.0.ffn_up.weight" in tensors and "blk.1.ffn_up_exps.weight" in tensors


def test_experts_are_split_and_transposed_exactly(llama4_checkpoint_factory, llama4_gguf_factory):
    """Byte-level check of the expert layout against the safetensors data."""
    import numpy as np
    from safetensors.numpy import load_file

    ckpt = llama4_checkpoint_factory("scout")
    src = load_file(str(next(ckpt.glob("*.safetensors"))))
    _, tensors = read_meta(llama4_gguf_factory("scout", "f32"))
    gate_up = src["language_model.model.layers.1.feed_forward.experts.gate_up_proj"]
    down = src["language_model.model.layers.1.feed_forward.experts.down_proj"]
    ff = down.shape[1]
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_gate_exps.weight"].data),
                                  gate_up[:, :, :ff].transpose(0, 2, 1))
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_up_exps.weight"].data),
                                  gate_up[:, :, ff:].transpose(0, 2, 1))
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_down_exps.weight"].data),
                                  down.transpose(0, 2, 1))


def test_vision_tensors_are_left_out_and_reported(llama4_checkpoint_factory, tmp_path):
    from safetensors import safe_open

    from llamactl.convert import convert_checkpoint

    ckpt = llama4_checkpoint_factory("scout")
    names = set()
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), "np") as fh:
            names.update(fh.keys())
    vision = sorted(n for n in names if n.startswith(("vision_model.", "multi_modal_projector.")))
    assert vision  # the kit's checkpoint really has a vision tower and projector
    result = convert_checkpoint(ckpt, tmp_path / "s.gguf", outtype="f32")
    assert result.details["skipped_tensors"] == vision
    assert any("vision" in n for n in result.details["notes"])
    _, tensors = read_meta(tmp_path / "s.gguf")
    # every text tensor is there once; nothing of the vision side
    text = [n for n in names if n.startswith("language_model.")]
    moe_layers = len(result.details["moe_layers"])
    # gate_up_proj becomes two tensors; rope_freqs is computed
    assert len(tensors) == len(text) + moe_layers + 1


def test_text_only_checkpoint_converts(llama4_checkpoint_factory, llama4_prompt_ids, tmp_path):
    """A Llama4ForCausalLM checkpoint (model_type llama4_text, flat config)."""
    from llamactl.convert import convert_checkpoint

    ckpt = llama4_checkpoint_factory("scout", vision=False)
    result = convert_checkpoint(ckpt, tmp_path / "t.gguf", outtype="f32")
    assert result.model_type == "llama4_text" and result.details["skipped_tensors"] == []
    diff, top1, _ = parity(tmp_path / "t.gguf", ckpt, llama4_prompt_ids(ckpt), TOL["f32"])
    assert diff <= TOL["f32"] and top1 >= 0.99


def _same_gguf(a, b) -> None:
    """Same metadata (general.name aside: it comes from the folder name) and tensors."""
    import numpy as np

    meta_a, ten_a = read_meta(a)
    meta_b, ten_b = read_meta(b)
    meta_a.pop("general.name"), meta_b.pop("general.name")
    assert meta_a == meta_b
    assert list(ten_a) == list(ten_b)
    for name in ten_a:
        np.testing.assert_array_equal(np.asarray(ten_a[name].data), np.asarray(ten_b[name].data), err_msg=name)


def test_meta_style_config_gives_the_same_file(llama4_gguf_factory):
    """Meta's config.json has rope_theta + rope_scaling and no moe_layers/layer_types;
    transformers 5 writes rope_parameters. Both must give the same GGUF."""
    _same_gguf(llama4_gguf_factory("scout", "f32"), llama4_gguf_factory("scout", "f32", config_style="meta"))


def test_sharded_checkpoint_converts_identically(llama4_gguf_factory):
    _same_gguf(llama4_gguf_factory("maverick", "f32"),
               llama4_gguf_factory("maverick", "f32", max_shard_size="3MB"))
