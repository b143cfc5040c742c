"""Llama 4 conversion checked against transformers, the independent reference.

Tiny random Scout-like (every layer MoE, 4 experts, QK norm, llama3 rope scaling) and
Maverick-like (MoE every second layer with dense FFN layers between, 128 experts, no QK
norm) checkpoints are converted and run by the real llama.cpp; their logits over a prompt
of 400 tokens (4 layers: layer 3 is a NoPE layer) are compared with transformers' float32
forward pass.

Tolerances (max |Δlogit| over all positions and the whole vocabulary), measured here with
an F32 KV cache (Scout-like / Maverick-like), with headroom:
- f32 (float32 source, real top-1 routing): 2.2e-5 / 7.9e-6 -> 1e-3.
- f16 / bf16 (bfloat16 source, as Meta's checkpoints are, so the weights convert exactly
  and only llama.cpp's 16-bit arithmetic differs): f16 0.0037 / 0.0090 -> 0.02;
  bf16 0.031 / 0.051 -> 0.1. These use routing to all experts: with top-1 routing the
  router's choice flips at a few near-tied tokens under 16-bit activations (measured: 1-10
  of 400 positions move by 1-1.5), which says nothing about the conversion.
- Q8_0 (through llamactl quantize, from the f16 file): 0.18 -> 0.5.
Top-1 agreement is 100% for f32 and f16; for bf16 it is 99.3% / 98.0% raw, and every
disagreement is a near-tie (the two tokens within the tolerance under transformers' own
logits), so the test counts near-ties and asks 99%, and asks 97% raw.
Broken conversions (gate/up swapped, experts not transposed, Llama 3's q/k permutation)
move the f32 logits by 1.9-3.6 with top-1 at 10-62%: far outside."""

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


@pytest.mark.slow
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


TOKENIZER_STRINGS = [
    "Hello, world!",
    "They'll say it's fine; we'd rather you'd checked. I'M SURE THEY'VE MISSED IT.",
    "TheQuickBrownFox uses XMLHttpRequest and getElementById in HTTPServerError handlers.",
    "Café, naïve, résumé, jalapeño, Zürich, Kraków, façade, déjà vu.",
    "日本語のテキスト。中文：你好，世界！한국어 문장. Русский текст.",
    "Emoji 🦙🚀✨ 👍🏽 🇫🇷 and ❤️ in chat.",
    "Numbers 1234567 3.14159 1,000,000 2024-07-23 09:30:00",
    "Whitespace    runs   and\ttabs\t\tand\n\nblank lines\n\n\n  indented",
    "def f(x):\n    return x ** 2  # square\n",
    "<|begin_of_text|><|header_start|>user<|header_end|>\n\nHi there<|eot|>",
    "   leading spaces and trailing   ",
    "",
]
# strings whose pieces can differ between Llama 4's split rule and Llama 3's
SPLIT_RULE_STRINGS = [
    "TheQuickBrownFox uses XMLHttpRequest and getElementById in HTTPServerError handlers.",
    "They'll say it's fine; we'd rather you'd checked. I'M SURE THEY'VE MISSED IT.",
]


def _hf_tokenizer(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt)


def _llama_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def test_tokenizer_matches_transformers(llama4_checkpoint_factory, llama4_gguf_factory):
    ckpt = llama4_checkpoint_factory("scout")
    tok = _hf_tokenizer(ckpt)
    llm = load_llama(llama4_gguf_factory("scout", "f32"), vocab_only=True)
    try:
        for text in TOKENIZER_STRINGS:
            assert _llama_ids(llm, text) == tok.encode(text, add_special_tokens=False), text
        # BOS is added as transformers adds it
        assert llm.tokenize(b"Hi", add_bos=True, special=True) == tok.encode("Hi")
        # the special tokens are single control tokens, and <|eot|> ends a turn
        eot = tok.convert_tokens_to_ids("<|eot|>")
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        assert llama_cpp.llama_vocab_eot(vocab) == eot
        for end in ("<|eot|>", "<|eom|>", "<|end_of_text|>"):
            assert llama_cpp.llama_vocab_is_eog(vocab, tok.convert_tokens_to_ids(end)), end
        assert _llama_ids(llm, "<|header_start|>") == [tok.convert_tokens_to_ids("<|header_start|>")]
    finally:
        llm.close()
    meta, _ = read_meta(llama4_gguf_factory("scout", "f32"))
    types = meta["tokenizer.ggml.token_type"]
    for special in ("<|begin_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>"):
        assert types[tok.convert_tokens_to_ids(special)] == 3  # CONTROL
    assert meta["tokenizer.ggml.bos_token_id"] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert meta["tokenizer.ggml.eos_token_id"] == eot
    assert meta["tokenizer.ggml.eom_token_id"] == tok.convert_tokens_to_ids("<|eom|>")
    # the embedding is padded past the tokenizer (as Scout's 202048 rows for 201135 tokens)
    assert len(meta["tokenizer.ggml.tokens"]) > len(tok)
    assert all(t == 5 for t in types[len(tok):])  # UNUSED


def test_pre_tokenizer_name_matters(llama4_checkpoint_factory, tmp_path, monkeypatch):
    """Written as `llama-bpe` (Llama 3's rule), the same vocabulary tokenizes the kit's
    CamelCase and contraction strings differently: the tokenizer test has teeth."""
    import llamactl.convert.llama4 as l4
    from llamactl.convert import convert_checkpoint

    ckpt = llama4_checkpoint_factory("maverick")
    tok = _hf_tokenizer(ckpt)
    monkeypatch.setattr(l4, "PRE_TOKENIZER", "llama-bpe")
    out = tmp_path / "wrong-pre.gguf"
    convert_checkpoint(ckpt, out, outtype="f32")
    llm = load_llama(out, vocab_only=True)
    try:
        wrong = [_llama_ids(llm, s) != tok.encode(s, add_special_tokens=False) for s in SPLIT_RULE_STRINGS]
    finally:
        llm.close()
    assert any(wrong)  # contractions: Llama 3's rule splits "'ll" off, Llama 4's keeps "They'll"


CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "  What's the capital of France?  "},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? 日本"},
]


def test_chat_template_renders_like_transformers(llama4_checkpoint_factory, llama4_gguf_factory):
    import ctypes

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    ckpt = llama4_checkpoint_factory("scout")
    expected = _hf_tokenizer(ckpt).apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    meta, _ = read_meta(llama4_gguf_factory("scout", "f32"))
    template = meta["tokenizer.chat_template"]
    tokens = meta["tokenizer.ggml.tokens"]
    # what llama-cpp-python's chat completion renders from the GGUF
    formatter = Jinja2ChatFormatter(template, eos_token=tokens[meta["tokenizer.ggml.eos_token_id"]],
                                    bos_token=tokens[meta["tokenizer.ggml.bos_token_id"]])
    assert formatter(messages=CONVERSATION).prompt == expected
    # llama.cpp's own renderer recognises the template as Llama 4's (it leaves BOS to the
    # tokenizer)
    msgs = (llama_cpp.llama_chat_message * len(CONVERSATION))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in CONVERSATION])
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(template.encode(), msgs, len(CONVERSATION), True, buf, len(buf))
    assert n > 0
    assert "<|begin_of_text|>" + buf.raw[:n].decode() == expected


def _copy_with_config(src, dst, edit):
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg["text_config"] if "text_config" in cfg else cfg, cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("edit,exc_name,words", [
    # llama.cpp applies the QK norm by expert count (off only with 128 experts)
    (lambda tc, cfg: tc.update(use_qk_norm=False), "LlamactlError", "QK norm"),
    (lambda tc, cfg: tc.update(moe_layers=[0, 2]), "LlamactlError", "interleave step"),
    (lambda tc, cfg: tc.update(no_rope_layers=[1, 1, 1, 1]), "LlamactlError", "no-RoPE"),
    (lambda tc, cfg: tc.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "LlamactlError", "yarn"),
    (lambda tc, cfg: tc.update(intermediate_size=128), "IntegrityError", "does not match"),
    (lambda tc, cfg: cfg.update(quantization_config={"quant_method": "fbgemm_fp8"}), "LlamactlError", "quantized"),
])
def test_unrepresentable_or_inconsistent_checkpoints_fail_cleanly(edit, exc_name, words, llama4_checkpoint_factory,
                                                                  tmp_path):
    import llamactl.errors as errors
    from llamactl.convert import convert_checkpoint

    bad = _copy_with_config(llama4_checkpoint_factory("scout"), tmp_path / "bad", edit)
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(errors.LlamactlError) as info:
        convert_checkpoint(bad, out, outtype="f32")
    assert type(info.value).__name__ == exc_name
    assert words in str(info.value)
    assert not out.exists()
    assert not any(out.parent.glob("*")) if out.parent.exists() else True


def test_missing_expert_tensor_fails_with_no_output(llama4_checkpoint_factory, tmp_path):
    from safetensors.numpy import load_file, save_file

    import llamactl.errors as errors
    from llamactl.convert import convert_checkpoint

    bad = _copy_with_config(llama4_checkpoint_factory("maverick"), tmp_path / "bad", lambda tc, cfg: None)
    shard = next(bad.glob("*.safetensors"))
    tensors = load_file(str(shard))
    del tensors["language_model.model.layers.3.feed_forward.experts.down_proj"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    out = tmp_path / "model.gguf"
    with pytest.raises(errors.IntegrityError, match="layers.3.feed_forward.experts.down_proj"):
        convert_checkpoint(bad, out, outtype="f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_unsupported_model_type_names_llama4_as_supported(llama4_checkpoint_factory, tmp_path):
    import llamactl.errors as errors
    from llamactl.convert import convert_checkpoint

    bad = _copy_with_config(llama4_checkpoint_factory("scout"), tmp_path / "bad",
                            lambda tc, cfg: cfg.update(model_type="mixtral"))
    with pytest.raises(errors.LlamactlError) as info:
        convert_checkpoint(bad, tmp_path / "m.gguf")
    assert info.value.exit_code == 1
    assert "mixtral" in str(info.value) and "llama4" in str(info.value)
    assert not (tmp_path / "m.gguf").exists()


def test_cli_converts_scout_and_says_the_vision_tower_is_left_out(llama4_checkpoint_factory, cli, tmp_path):
    ckpt = llama4_checkpoint_factory("scout")
    out = tmp_path / "scout.gguf"
    proc = cli("convert", str(ckpt), "-o", str(out), "--outtype", "f32")
    assert proc.returncode == 0, proc.err
    assert proc.out.strip() == str(out)          # stdout: the path only
    assert "vision tower and projector (26 tensors" in proc.err
    meta, _ = read_meta(out)
    assert meta["general.architecture"] == "llama4"


def test_cli_unsupported_model_type_exits_1_naming_llama4(llama4_checkpoint_factory, cli, tmp_path):
    bad = _copy_with_config(llama4_checkpoint_factory("scout"), tmp_path / "bad",
                            lambda tc, cfg: cfg.update(model_type="mixtral"))
    out = tmp_path / "m.gguf"
    proc = cli("convert", str(bad), "-o", str(out))
    assert proc.returncode == 1
    assert "mixtral" in proc.err and "llama4" in proc.err
    assert "Traceback" not in proc.err
    assert not out.exists() and proc.out == ""


# text_config of Meta's published Scout and Maverick Instruct checkpoints (the fields that
# matter here), in Meta's style: rope_theta + rope_scaling, empty no_rope_layers, and
# Scout's integer attn_temperature_tuning
REAL_TEXT_CONFIGS = {
    "llama4-scout": dict(
        attention_bias=False, attention_chunk_size=8192, attn_scale=0.1, attn_temperature_tuning=4,
        bos_token_id=200000, eos_token_id=[200001, 200007, 200008], floor_scale=8192, head_dim=128,
        hidden_act="silu", hidden_size=5120, interleave_moe_layer_step=1, intermediate_size=8192,
        intermediate_size_mlp=16384, max_position_embeddings=10485760, model_type="llama4_text",
        no_rope_layers=[], num_attention_heads=40, num_experts_per_tok=1, num_hidden_layers=48,
        num_key_value_heads=8, num_local_experts=16, pad_token_id=200018, rms_norm_eps=1e-05,
        rope_scaling={"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        rope_theta=500000.0, use_qk_norm=True, vocab_size=202048),
    "llama4-maverick": dict(
        attention_bias=False, attention_chunk_size=8192, attn_scale=0.1, attn_temperature_tuning=4,
        bos_token_id=200000, eos_token_id=[200001, 200007, 200008], floor_scale=8192, head_dim=128,
        hidden_act="silu", hidden_size=5120, interleave_moe_layer_step=2, intermediate_size=8192,
        intermediate_size_mlp=16384, max_position_embeddings=1048576, model_type="llama4_text",
        no_rope_layers=[], num_attention_heads=40, num_experts_per_tok=1, num_hidden_layers=48,
        num_key_value_heads=8, num_local_experts=128, pad_token_id=200018, rms_norm_eps=1e-05,
        rope_scaling=None, rope_theta=500000.0, use_qk_norm=False, vocab_size=202048),
}
# llama.cpp's parameter counts of the text GGUFs (FIELD-NOTES, from llama-bench headers)
REAL_N_PARAMS = {"llama4-scout": 107_769_861_184, "llama4-maverick": 400_711_848_960}


def _sparse_checkpoint(folder, tc):
    """A checkpoint with the real shapes whose data is a sparse hole: headers only."""
    import json
    import struct

    folder.mkdir()
    H, E, ff, V = tc["hidden_size"], tc["num_local_experts"], tc["intermediate_size"], tc["vocab_size"]
    hd = tc["head_dim"]
    p = "language_model.model."
    shapes = {p + "embed_tokens.weight": [V, H], p + "norm.weight": [H], "language_model.lm_head.weight": [V, H],
              "multi_modal_projector.linear_1.weight": [H, 4096],
              "vision_model.patch_embedding.linear.weight": [1408, 588]}
    for i in range(tc["num_hidden_layers"]):
        lp = f"{p}layers.{i}."
        shapes.update({lp + "input_layernorm.weight": [H], lp + "post_attention_layernorm.weight": [H],
                       lp + "self_attn.q_proj.weight": [40 * hd, H], lp + "self_attn.k_proj.weight": [8 * hd, H],
                       lp + "self_attn.v_proj.weight": [8 * hd, H], lp + "self_attn.o_proj.weight": [H, 40 * hd]})
        f = lp + "feed_forward."
        if (i + 1) % tc["interleave_moe_layer_step"] == 0:
            shapes.update({f + "router.weight": [E, H], f + "experts.gate_up_proj": [E, H, 2 * ff],
                           f + "experts.down_proj": [E, ff, H], f + "shared_expert.gate_proj.weight": [ff, H],
                           f + "shared_expert.up_proj.weight": [ff, H], f + "shared_expert.down_proj.weight": [H, ff]})
        else:
            m = tc["intermediate_size_mlp"]
            shapes.update({f + "gate_proj.weight": [m, H], f + "up_proj.weight": [m, H], f + "down_proj.weight": [H, m]})
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)  # a hole: no disk used
    (folder / "config.json").write_text(json.dumps({"model_type": "llama4", "text_config": tc,
                                                    "vision_config": {}}))
    return folder


@pytest.mark.parametrize("key", ["llama4-scout", "llama4-maverick"])
def test_real_scout_and_maverick_map_onto_llama_cpp_tensors(key, tmp_path):
    """At real size (headers only), the plan for Meta's Scout and Maverick is exactly the
    tensor inventory llama.cpp's llama4 loader expects, with its parameter count."""
    from llamactl.convert import common
    from llamactl.convert.llama4 import hparams_from_config, plan_tensors
    from tests.synthetic.writer import SPECS, tensor_inventory

    folder = _sparse_checkpoint(tmp_path / key, REAL_TEXT_CONFIGS[key])
    ckpt = common.open_checkpoint(folder)
    hp = hparams_from_config(ckpt.config)
    plan = plan_tensors(ckpt, hp, "bf16")
    got = {j.name: tuple(reversed(j.shape)) for j in plan.jobs}           # GGUF (ne) order
    want = {name: tuple(shape) for name, shape, _ in tensor_inventory(SPECS[key])}
    assert got == want
    assert plan.n_params == REAL_N_PARAMS[key]
    assert len(plan.skipped) == 2
    assert (hp.n_expert, hp.moe_step, hp.use_qk_norm) == ((16, 1, True) if key == "llama4-scout" else (128, 2, False))
    # routed experts are about 96% of Maverick
    if key == "llama4-maverick":
        assert plan.n_expert_params * hp.n_expert / plan.n_params > 0.95


def test_long_context_only_differences_convert_with_a_note(llama4_checkpoint_factory, tmp_path):
    from llamactl.convert import convert_checkpoint

    odd = _copy_with_config(llama4_checkpoint_factory("maverick"), tmp_path / "odd",
                            lambda tc, cfg: tc.update(attention_chunk_size=4096, attn_temperature_tuning=False))
    result = convert_checkpoint(odd, tmp_path / "odd.gguf", outtype="f32")
    notes = " | ".join(result.details["notes"])
    assert "attention chunks of 4096" in notes and "temperature tuning" in notes
    assert "longer than 4096 tokens" in notes
    plain = convert_checkpoint(llama4_checkpoint_factory("maverick"), tmp_path / "plain.gguf", outtype="f32")
    assert not any("differ" in n for n in plain.details["notes"])


def test_rope_freqs_for_real_scout_scaling_match_transformers():
    """Scout's own llama3 scaling (factor 16, low = high = 1, original context 8192):
    llama.cpp divides each frequency by rope_freqs; transformers' scaled frequencies must
    be the unscaled ones divided by exactly those factors."""
    import numpy as np
    from transformers import Llama4TextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llamactl.convert.llama4 import hparams_from_config, llama3_rope_freqs

    tc = dict(REAL_TEXT_CONFIGS["llama4-scout"])
    hp = hparams_from_config({"model_type": "llama4", "text_config": tc})
    factors = llama3_rope_freqs(hp)
    cfg = Llama4TextConfig(head_dim=128, hidden_size=5120, num_attention_heads=40, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, **{k: v for k, v in tc["rope_scaling"].items() if k != "rope_type"}})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    base = 1.0 / (500000.0 ** (np.arange(0, 128, 2, dtype=np.float64) / 128))
    np.testing.assert_allclose(base / factors, scaled.double().numpy(), rtol=1e-5)
    assert factors.shape == (64,) and set(np.unique(factors)) == {1.0, 16.0}
