"""A real byte-level BPE tokenizer, trained at test time with the `tokenizers` library on a
small built-in corpus, shaped like Llama 3's: the same pre-tokenizer regex, byte-level
alphabet, `ignore_merges`, special tokens appended after the BPE vocabulary, a BOS added by
the post-processor, and a Llama-3-style chat template written for this kit.

Everything is parameterised (regex, special tokens, BOS/EOS, template) so that other
architectures (Llama 4) can build their own tiny tokenizer with the same code."""

from __future__ import annotations

import json
from pathlib import Path

# Llama 3's pre-tokenizer split rule (as in Meta's tokenizer.json).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3's first special tokens, in Meta's order (ids follow the BPE vocabulary).
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

# Written for this kit, in the shape of Llama 3 Instruct's: BOS, then every message as
# header + content + <|eot_id|>, and an open assistant header when a reply is wanted.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Varied text: English prose with contractions and CamelCase, code, numbers, accents, other
# scripts and emoji, so that the merges cover more than ASCII letters.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it'd seen foxes before.",
    "They'll say we're late, but I'm sure you've heard it's fine. She'd rather wait, wouldn't she?",
    "Llama models run on llama.cpp through GGUF files. Converting a checkpoint keeps the weights.",
    "A tokenizer splits text into pieces; the model predicts the next piece, one at a time.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 65536 3.14159 2.71828 1,000,000.",
    "Dates like 2024-07-23 and times like 09:30:00 appear in logs, receipts and calendars.",
    "def forward(self, hidden_states):\n    return self.mlp(self.norm(hidden_states))\n",
    "for i in range(10):\n    print(i * i)\n\nif __name__ == \"__main__\":\n    main()\n",
    "HTTPServer, JSONDecoder, CamelCaseWords, snake_case_words and kebab-case-words differ.",
    "Café, naïve, résumé, jalapeño, Zürich, São Paulo, Kraków, façade, coöperate, déjà vu.",
    "Les élèves étudient à l'école; ¿Dónde está la biblioteca? Größe, Straße, Übung.",
    "日本語のテキストも少し含めます。東京は大きな都市です。中文也可以：你好，世界！",
    "한국어 문장도 있습니다. Русский текст тоже есть. Ελληνικά γράμματα. עברית. العربية.",
    "Emoji: 🦙 🚀 ✨ 👍🏽 ❤️ 🎉 — smileys 😀😃😄 and flags 🇫🇷 🇯🇵 in chat messages.",
    "Whitespace    runs   and\ttabs\t\tand\n\nblank lines\n\n\nmatter to byte-level BPE.",
    "Hello, world! Hello again, world. Goodbye, world? Hello; hello: HELLO, hello...",
    "The assistant answers the user's question briefly and accurately, then it stops.",
    "In 1969, Apollo 11 landed on the Moon; in 2012, Curiosity landed on Mars.",
    "user: What is the capital of France?\nassistant: The capital of France is Paris.",
    "system: You are a helpful assistant.\nuser: Write a haiku about llamas.\n",
    "Mountains, rivers, forests and oceans; weather changes quickly in the high Andes.",
    "Prices: $5.99, €12.50, £3, ¥1000, 15% off, 3x faster, 2^10 = 1024, a+b=c, x<y>z.",
    "Email me at someone@example.com or visit https://example.org/path?query=1&x=2.",
    "It's a truth universally acknowledged that a model's output depends on its input.",
]


def corpus_lines(repeat: int = 8) -> list[str]:
    """The training text; repeated so that common pairs pass the frequency threshold."""
    lines: list[str] = []
    for r in range(repeat):
        for i, line in enumerate(CORPUS):
            # small variations so that repetition is not exact
            lines.append(line if (i + r) % 3 else line.lower())
    return lines


def build_tokenizer(
    out_dir: Path,
    *,
    bpe_vocab_size: int = 500,
    pattern: str = LLAMA3_PATTERN,
    special_tokens: list[str] | None = None,
    bos_token: str = "<|begin_of_text|>",
    eos_token: str = "<|eot_id|>",
    pad_token: str | None = None,
    chat_template: str | None = LLAMA3_CHAT_TEMPLATE,
    template_in: str = "tokenizer_config",
    extra_corpus: list[str] | None = None,
    add_bos: bool = True,
) -> int:
    """Train a tokenizer and write tokenizer.json, tokenizer_config.json and
    special_tokens_map.json (plus chat_template.jinja when template_in="jinja") into
    `out_dir`. Returns the total vocabulary size (BPE entries + special tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special_tokens = list(special_tokens or LLAMA3_SPECIAL_TOKENS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    text = corpus_lines() + list(extra_corpus or [])
    tok.train_from_iterator(text, trainer=trainer)
    n_bpe = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    bos_id = tok.token_to_id(bos_token)
    if add_bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos_token}:0 $A:0",
                pair=f"{bos_token}:0 $A:0 {bos_token}:1 $B:1",
                special_tokens=[(bos_token, bos_id)],
            ),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out_dir / "tokenizer.json"))

    added = {
        str(n_bpe + i): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for i, t in enumerate(special_tokens)
    }
    config: dict = {
        "added_tokens_decoder": added,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if pad_token:
        config["pad_token"] = pad_token
    if chat_template is not None:
        if template_in == "tokenizer_config":
            config["chat_template"] = chat_template
        elif template_in == "jinja":
            (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        else:
            raise ValueError(f"template_in must be 'tokenizer_config' or 'jinja', not {template_in!r}")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    special_map = {"bos_token": bos_token, "eos_token": eos_token}
    if pad_token:
        special_map["pad_token"] = pad_token
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return tok.get_vocab_size()
