"""Converted GGUFs compute what the original computes: llama.cpp against transformers'
LlamaForCausalLM in float32 (the independent reference), on every position of a prompt of
100+ tokens; tokenization and chat formatting agree with the Hugging Face tokenizer.

Tolerances on max |Δlogit| (logits have std ≈ 0.8 over the vocabulary), measured on this
machine with an F32 KV cache over all variants (the README's table has the figures):
- f32:  measured ≤ 6.4e-6 (the same float32 arithmetic, in another order) -> 1e-3
- f16:  measured ≤ 5.5e-3 (11-bit mantissa, relative rounding 2^-11)      -> 2e-2
- bf16: measured ≤ 3.8e-2 (8-bit mantissa: 8x coarser than f16)           -> 0.1
- Q8_0: measured ≤ 0.14 (8-bit blocks of 32 with one scale)               -> 0.25
A conversion without the q/k permutation or without rope_freqs moves the logits by 2-3:
far outside every tolerance (tests below build such files on purpose and watch the check
fail). Top-1: a random tiny model has many near-ties among its 511 logits (the top-2 gap
is below 0.01 at a few per cent of positions), so a rounding error of the weights' type can
swap two nearly equal logits. Greedy top-1 must agree at >= 99% of positions where
llama.cpp's choice is not within the tolerance of the reference's best logit (a tie), and
strictly at >= 99% for f32 and f16. A model trained for 50 steps on the kit's corpus
(TRAINED), checked on that text, is decisive as a real model is: there top-1 must agree
strictly at >= 99% for every type (measured: f32, f16, bf16 100%, Q8_0 99.7%)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kit.checkpoint import load_reference, reference_logits
from tests.kit.llama_helpers import all_logits, load_llama

TOLERANCE = {"f32": 1e-3, "f16": 2e-2, "bf16": 0.1, "Q8_0": 0.25}
MEAN_TOLERANCE = {"f32": 1e-4, "f16": 2e-3, "bf16": 1.5e-2, "Q8_0": 4e-2}

PROMPT = (
    "The quick brown fox jumps over the lazy dog, and they'll say it's fine. "
    "Numbers 12345 and 3.14159; Café Zürich déjà vu. 日本語のテキスト、你好世界! 🦙🚀 "
    "def forward(self, x):\n    return self.mlp(self.norm(x))\n\n"
    "Mountains, rivers, forests and oceans; weather changes quickly in the high Andes. "
    "HTTPServer and CamelCaseWords differ from snake_case_words. In 1969 Apollo 11 landed. "
    "The assistant answers the user's question briefly and accurately, then it stops."
)

VARIANTS = {
    "untied": dict(tied=False, rope_scaling=False),
    "tied": dict(tied=True, rope_scaling=False),
    "llama3-rope": dict(tied=False, rope_scaling=True),
    "tied-llama3-rope": dict(tied=True, rope_scaling=True),
    "bf16-source": dict(tied=True, rope_scaling=True, dtype="bfloat16"),
}
# A model trained for a few steps on the kit's corpus, checked on that text: decisive, as a
# real model is on ordinary text, so greedy top-1 must agree strictly for every type.
TRAINED = dict(tied=True, rope_scaling=True, train_steps=50)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_factory):
    """(prompt ids, transformers float32 logits) per variant, computed once."""
    from transformers import AutoTokenizer

    cache: dict[str, tuple[list[int], np.ndarray]] = {}

    def get(variant: str) -> tuple[list[int], np.ndarray]:
        if variant not in cache:
            from tests.kit.checkpoint import training_text

            spec = TRAINED if variant == "trained" else VARIANTS[variant]
            ckpt = tiny_checkpoint_factory(**spec)
            text = training_text() if variant == "trained" else PROMPT
            ids = AutoTokenizer.from_pretrained(ckpt)(text)["input_ids"][:300]
            assert len(ids) >= 100
            cache[variant] = (ids, reference_logits(load_reference(ckpt), ids))
        return cache[variant]

    return get


def compare(gguf_path, ids, ref) -> dict[str, float]:
    got = all_logits(load_llama(gguf_path, logits_all=True, f32_cache=True), ids)
    diff = np.abs(got - ref)
    rows = np.arange(len(ids))
    choice = got.argmax(1)
    best = ref.argmax(1)
    return {
        "scale": max(1.0, float(ref.std()) / 0.8),   # tolerances are for logits of std 0.8
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "top1": float((choice == best).mean()),
        # llama.cpp's choice is as good as the reference's up to `gap`: a near-tie
        "gap": ref[rows, best] - ref[rows, choice],
    }


def assert_parity(m: dict, kind: str, strict_top1: bool = False) -> None:
    """Rounding errors scale with the weights, hence with the logits: a model whose logits
    spread wider than std 0.8 gets proportionally wider tolerances."""
    tol = TOLERANCE[kind] * m["scale"]
    assert m["max"] <= tol, f"max |Δlogit| {m['max']:.4g} > {tol:.4g} ({kind})"
    assert m["mean"] <= MEAN_TOLERANCE[kind] * m["scale"], f"mean |Δlogit| {m['mean']:.4g} ({kind})"
    agree_up_to_ties = float((m["gap"] <= tol).mean())
    assert agree_up_to_ties >= 0.99, f"top-1 agrees at {agree_up_to_ties:.1%} up to ties ({kind})"
    if strict_top1 or kind in ("f32", "f16"):
        assert m["top1"] >= 0.99, f"top-1 agrees at {m['top1']:.1%} ({kind})"


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant, outtype, reference, tiny_gguf_factory):
    ids, ref = reference(variant)
    m = compare(tiny_gguf_factory(outtype, **VARIANTS[variant]), ids, ref)
    assert_parity(m, outtype)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["untied", "tied-llama3-rope"])
def test_q8_0_logits_match_transformers(variant, reference, tiny_gguf_factory, tmp_path):
    from llamactl.quantize import quantize_gguf

    ids, ref = reference(variant)
    q8 = tmp_path / "q8.gguf"
    quantize_gguf(tiny_gguf_factory("f32", **VARIANTS[variant]), q8, "Q8_0")
    assert_parity(compare(q8, ids, ref), "Q8_0")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "Q8_0"])
def test_trained_model_agrees_on_top1_strictly(kind, reference, tiny_checkpoint_factory, tmp_path):
    from llamactl.convert import convert_checkpoint
    from llamactl.quantize import quantize_gguf

    ids, ref = reference("trained")
    out = tmp_path / "m.gguf"
    convert_checkpoint(tiny_checkpoint_factory(**TRAINED), out, "f32" if kind == "Q8_0" else kind)
    if kind == "Q8_0":
        out = quantize_gguf(out, tmp_path / "q8.gguf", "Q8_0").path
    assert_parity(compare(out, ids, ref), kind, strict_top1=True)


@pytest.mark.parametrize("outtype", ["f32", "bf16"])
@pytest.mark.parametrize("broken", ["no-qk-permutation", "no-rope-freqs"])
def test_broken_conversions_fail_the_check(broken, outtype, reference, tiny_checkpoint_factory, tmp_path):
    """The parity check has teeth: each deliberate bug moves the logits far outside the
    tolerance (and the same check passes on the correct conversion above)."""
    from llamactl.convert import convert_checkpoint

    variant = "tied-llama3-rope"
    ids, ref = reference(variant)
    opts = {"permute_qk": False} if broken == "no-qk-permutation" else {"write_rope_freqs": False}
    out = tmp_path / "broken.gguf"
    convert_checkpoint(tiny_checkpoint_factory(**VARIANTS[variant]), out, outtype, **opts)
    m = compare(out, ids, ref)
    assert m["max"] > 10 * TOLERANCE[outtype]
    with pytest.raises(AssertionError):
        assert_parity(m, outtype)


# ------------------------------------------------------------------------- tokenizer

TOKENIZER_TEXTS = [
    "Hello, world! This is plain ASCII text.",
    "Café, naïve, résumé, jalapeño, Zürich, São Paulo, Kraków",
    "日本語のテキスト。東京は大きな都市です。你好，世界！한국어 문장",
    "Emoji 🦙🚀✨ 👍🏽 ❤️ 🇫🇷 and 😀😃😄",
    "Digits 0 12 345 6789 1234567890 3.14159 2024-07-23 1,000,000",
    "runs   of    spaces\n\n\n\nand newlines\t\ttabs   \n  \n",
    "   leading and trailing   ",
    "they'll we're I'm you've she'd IT'S CamelCaseWords HTTPServer snake_case",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "text with <|begin_of_text|> inside and <|eot_id|> again",
    "x<y>z a+b=c $5.99 €12 100% https://example.org/path?q=1&x=2",
    "",
    "\n",
    "🦙",
]


@pytest.mark.parametrize("text", TOKENIZER_TEXTS)
def test_tokenizer_matches_hugging_face(text, vocab_only, tiny_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint)
    llm = vocab_only
    expected = hf(text)["input_ids"]                       # BOS + text, specials parsed
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == expected
    plain = hf(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == plain
    assert llm.detokenize(plain, special=True).decode("utf-8") == text


@pytest.fixture(scope="module")
def vocab_only(tiny_gguf):
    llm = load_llama(tiny_gguf, vocab_only=True)
    yield llm
    llm.close()


# ---------------------------------------------------------------------- chat template

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "  What is the capital of France?  "},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? 日本 🦙\n\n"},
    ],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one-turn", "multi-turn"])
def test_chat_template_renders_like_transformers(conversation, tiny_gguf, tiny_checkpoint):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint)
    expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    llm = load_llama(tiny_gguf)
    # the bindings picked up the GGUF's template ...
    assert llm.chat_format == "chat_template.default"
    template = llm.metadata["tokenizer.chat_template"]
    text_of = llm._model.token_get_text
    formatter = Jinja2ChatFormatter(template, eos_token=text_of(llm.token_eos()), bos_token=text_of(llm.token_bos()))
    assert formatter(messages=conversation).prompt == expected
    # ... and the prompt llama.cpp evaluates for a chat completion is transformers' token list
    expected_ids = hf.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    if hasattr(expected_ids, "keys"):
        expected_ids = expected_ids["input_ids"]
    reply = llm.create_chat_completion(messages=conversation, max_tokens=1, temperature=0.0)
    assert reply["usage"]["prompt_tokens"] == len(expected_ids)
    assert llm.tokenize(expected.encode(), add_bos=False, special=True) == list(expected_ids)


def test_chat_template_from_jinja_file(tiny_checkpoint_factory, tmp_path):
    """Checkpoints that keep the template in chat_template.jinja (transformers 5) convert too."""
    from llamactl.convert import convert_checkpoint
    from tests.kit.llama_helpers import read_meta
    from tests.kit.tokenizer import LLAMA3_CHAT_TEMPLATE

    ckpt = tiny_checkpoint_factory(template_in="jinja")
    assert (ckpt / "chat_template.jinja").is_file()
    out = tmp_path / "m.gguf"
    convert_checkpoint(ckpt, out, "f16")
    meta, _ = read_meta(out)
    assert meta["tokenizer.chat_template"] == LLAMA3_CHAT_TEMPLATE
