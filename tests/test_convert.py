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


# ------------------------------------------------------------------------- variants

def test_tied_embeddings_have_no_output_tensor(tiny_gguf_factory):
    _, tensors = read_meta(tiny_gguf_factory("f16", tied=True))
    assert "output.weight" not in tensors and "token_embd.weight" in tensors


def test_rope_freqs_match_transformers_llama3_scaling(tiny_gguf_factory, tiny_checkpoint_factory):
    """rope_freqs holds, per rotary dimension pair, the divisor transformers applies to
    the frequency under rope_type llama3 (computed here by transformers itself)."""
    import numpy as np
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ckpt = tiny_checkpoint_factory(rope_scaling=True)
    config = AutoConfig.from_pretrained(ckpt)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.hidden_size // config.num_attention_heads
    plain = 1.0 / (config.rope_parameters["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim))
    expected = plain / scaled.numpy()
    assert expected.max() > 7.9 and expected.min() == pytest.approx(1.0)   # the scaling matters here
    _, tensors = read_meta(tiny_gguf_factory("f32", rope_scaling=True))
    freqs = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64)
    np.testing.assert_allclose(freqs, expected, rtol=1e-5)


def test_transformers_style_config_converts_the_same(tiny_checkpoint_factory, tmp_path):
    """transformers 5 writes `rope_parameters` instead of rope_theta/rope_scaling."""
    import numpy as np

    from llamactl.convert import convert_checkpoint

    meta_style = tiny_checkpoint_factory(rope_scaling=True)
    tf_style = tiny_checkpoint_factory(rope_scaling=True, config_style="transformers")
    assert "rope_parameters" in json.loads((tf_style / "config.json").read_text())
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert_checkpoint(meta_style, a, "f32")
    convert_checkpoint(tf_style, b, "f32")
    meta_a, ta = read_meta(a)
    meta_b, tb = read_meta(b)
    for key in ("llama.rope.freq_base", "llama.context_length", "llama.attention.head_count_kv"):
        assert meta_a[key] == meta_b[key]
    assert ta.keys() == tb.keys()
    np.testing.assert_array_equal(ta["rope_freqs.weight"].data, tb["rope_freqs.weight"].data)


def test_sharded_checkpoint_converts_to_the_same_tensors(tiny_checkpoint_factory, tiny_gguf, tmp_path):
    import numpy as np

    from llamactl.convert import convert_checkpoint

    sharded = tiny_checkpoint_factory(max_shard_size="300KB")
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 3
    out = tmp_path / "sharded.gguf"
    convert_checkpoint(sharded, out, "f32")
    _, ta = read_meta(out)
    _, tb = read_meta(tiny_gguf)
    assert list(ta) == list(tb)
    for name in ta:
        np.testing.assert_array_equal(ta[name].data, tb[name].data)


def test_bf16_source_defaults_to_bf16_and_copies_bits_exactly(tiny_checkpoint_factory, tmp_path):
    import numpy as np

    from llamactl.convert import convert_checkpoint
    from llamactl.convert.common import MappedTensor, open_checkpoint

    ckpt = tiny_checkpoint_factory(tied=True, rope_scaling=True, dtype="bfloat16")
    out = tmp_path / "m.gguf"
    result = convert_checkpoint(ckpt, out)
    assert result.outtype == "bf16" and result.source_dtype == "BF16"
    from llamactl.gguf_info import read_gguf

    assert result.n_params == read_gguf(out).n_params          # counted as llama.cpp counts
    meta, tensors = read_meta(out)
    assert meta["general.file_type"] == 32  # MOSTLY_BF16
    src = open_checkpoint(ckpt).tensors["model.layers.0.mlp.down_proj.weight"]
    with MappedTensor(src) as m:
        expected = np.array(m.array)
    got = np.asarray(tensors["blk.0.ffn_down.weight"].data).view(np.uint16).reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == 0   # norms stay F32


def test_f16_output_types(tiny_gguf_factory):
    _, tensors = read_meta(tiny_gguf_factory("f16"))
    for name, t in tensors.items():
        expected = 0 if len(t.shape) == 1 else 1   # F32 for 1-D, F16 for matrices
        assert t.tensor_type == expected, name


def test_license_and_name_from_the_model_card(tiny_checkpoint, tmp_path):
    from llamactl.convert import convert_checkpoint

    ckpt = tmp_path / "Llama-3.2-Tiny-Instruct"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "README.md").write_text("---\nlicense: llama3.2\nlanguage:\n- en\n---\n# Tiny\n")
    out = tmp_path / "m.gguf"
    convert_checkpoint(ckpt, out, "f16")
    meta, _ = read_meta(out)
    assert meta["general.license"] == "llama3.2"
    assert meta["general.name"] == "Llama-3.2-Tiny-Instruct"


# ------------------------------------------------------------------------------- CLI

def test_cli_converts_with_progress_and_prints_the_path(tiny_checkpoint, tmp_path, cli):
    out = tmp_path / "model-f16.gguf"
    proc = cli("convert", str(tiny_checkpoint), "-o", str(out))
    assert proc.returncode == 0, proc.err
    assert proc.out == f"{out}\n"
    assert "converting: 21 tensors" in proc.err and "100%" in proc.err
    assert "llamactl quantize" in proc.err
    meta, _ = read_meta(out)
    assert meta["general.file_type"] == 1   # f16 by default for a float32 checkpoint
    doc = json.loads(cli("convert", str(tiny_checkpoint), "-o", str(tmp_path / "b.gguf"), "--outtype", "BF16",
                         "--json").out)
    assert doc["outtype"] == "bf16" and doc["n_tensors"] == 21 and doc["architecture"] == "llama"


def test_cli_default_output_name(tiny_checkpoint, tmp_path, cli):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "llamactl", "convert", str(tiny_checkpoint), "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == str(tmp_path / f"{tiny_checkpoint.name}-f16.gguf")
    again = subprocess.run([sys.executable, "-m", "llamactl", "convert", str(tiny_checkpoint)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--force" in again.stderr


# ------------------------------------------------------------------------ bad input

def _broken_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _expect_failure(cli, ckpt, tmp_path, code, *words, env=None):
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    proc = cli("convert", str(ckpt), "-o", str(out_dir / "m.gguf"), env=env)
    assert proc.returncode == code, proc.err
    lines = [line for line in proc.err.splitlines() if not line.startswith("hint: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.err
    for word in words:
        assert word in lines[0], proc.err
    assert "Traceback" not in proc.err and proc.out == ""
    assert list(out_dir.iterdir()) == []      # no output, no temporary file
    return lines[0]


def test_unsupported_architecture(tiny_checkpoint, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_failure(cli, ckpt, tmp_path, 1, "mistral", "supported architectures", "llama (Llama 3.x")


def test_missing_shard(tiny_checkpoint_factory, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint_factory(max_shard_size="300KB"), tmp_path / "ck")
    (ckpt / "model-00002-of-00014.safetensors").unlink()
    _expect_failure(cli, ckpt, tmp_path, 7, "shard missing", "model-00002-of-00014.safetensors")


def test_truncated_shard(tiny_checkpoint, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    shard = ckpt / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    _expect_failure(cli, ckpt, tmp_path, 7, "truncated", "model.safetensors")


def test_config_that_does_not_match_the_tensors(tiny_checkpoint, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_failure(cli, ckpt, tmp_path, 1, "does not match", "k_proj")
    cfg["num_key_value_heads"] = 2
    cfg["num_hidden_layers"] = 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_failure(cli, ckpt, tmp_path, 1, "does not match", "unexpected", "layers.1")


def test_missing_tokenizer(tiny_checkpoint, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    (ckpt / "tokenizer.json").unlink()
    _expect_failure(cli, ckpt, tmp_path, 1, "tokenizer")


def test_not_a_checkpoint(tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_failure(cli, empty, tmp_path, 1, "config.json")
    proc = cli("convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.gguf"))
    assert proc.returncode == 4
    proc = cli("convert", str(empty), "-o", str(tmp_path / "m.gguf"), "--outtype", "q4_k_m")
    assert proc.returncode == 2 and "quantize" in proc.err


def test_not_enough_disk(tiny_checkpoint, tmp_path, cli):
    _expect_failure(cli, tiny_checkpoint, tmp_path, 8, "disk space", env={"LLAMACTL_FAKE_FREE_BYTES": "4096"})


def test_interrupted_conversion_leaves_nothing(tiny_checkpoint, tmp_path):
    from llamactl.convert import convert_checkpoint

    seen = []

    def progress(name, done, total):
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m.gguf", "f32", progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_bf16_rounding_matches_torch():
    """float32 -> bf16 rounds to nearest even like torch (the reference for bf16 weights)."""
    import numpy as np
    import torch

    from llamactl.convert.common import float32_to_bf16

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000).astype(np.float32) * 0.05,
                        np.array([0.0, -0.0, 1.0, -1.5, 3.4e38, -3.4e38, np.inf, -np.inf, 1e-40,
                                  1.00390625, 1.01171875], dtype=np.float32)])
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16(x), expected)
    nan = float32_to_bf16(np.array([np.nan], dtype=np.float32))
    assert (nan[0] & 0x7F80) == 0x7F80 and (nan[0] & 0x7F) != 0


def test_unsupported_rope_scaling_is_refused_before_writing(tiny_checkpoint, tmp_path, cli):
    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_failure(cli, ckpt, tmp_path, 1, "yarn", "not supported")


def test_merges_as_strings_like_metas_tokenizer_json(tiny_checkpoint, tiny_gguf, tmp_path):
    """Meta's tokenizer.json stores merges as "a b" strings; newer tokenizers as pairs."""
    from llamactl.convert import convert_checkpoint

    ckpt = _broken_copy(tiny_checkpoint, tmp_path / "ck")
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    assert isinstance(tj["model"]["merges"][0], list)
    tj["model"]["merges"] = [" ".join(pair) for pair in tj["model"]["merges"]]
    (ckpt / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    out = tmp_path / "m.gguf"
    convert_checkpoint(ckpt, out, "f32")
    merges_a = read_meta(out)[0]["tokenizer.ggml.merges"]
    merges_b = read_meta(tiny_gguf)[0]["tokenizer.ggml.merges"]
    assert merges_a == merges_b and len(merges_a) > 200 and merges_a[0] == "Ġ a"
