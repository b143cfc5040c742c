"""Tiny random Llama 4 checkpoints, built at test time with transformers.

Two shapes, both saved the way Meta's checkpoints are (`Llama4ForConditionalGeneration`,
config.json `model_type: llama4`, with a tiny vision tower and projector whose tensors a
text converter must leave out), or as a text-only `Llama4ForCausalLM` (`llama4_text`):

- "scout": every layer MoE (interleave step 1), a handful of experts, QK norm, `llama3`
  rope scaling (with a short original context so that the scaling changes the rotation
  of a 100-token prompt: a missing `rope_freqs` shows), NoPE on every 4th layer.
  Hidden and expert widths are 256 so that K-quants apply.
- "maverick": interleave step 2 (dense FFN layers between MoE layers), no QK norm and no
  rope scaling. llama.cpp has no GGUF key for the QK norm and applies it unless the model
  has exactly 128 experts, so this variant has 128 experts (of tiny width).

Weights are drawn with std 0.05 (not 0.02; 0.1 for the narrower Maverick-like model): with
nearly uniform attention a layout bug barely moves the logits; with these it moves them by
whole units. RMSNorm weights are drawn around 1 so that a swapped norm shows too.

The tokenizer is a real byte-level BPE trained on the kit's corpus (tests/kit/tokenizer.py)
with Llama 4's split rule (the o200k one: CamelCase and contractions split differently
from Llama 3's), Llama 4's special tokens and a Llama-4-style chat template written for
this kit. The model's vocabulary is padded past the tokenizer (as Scout's 202048 rows for
201135 tokens)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Llama 4's pre-tokenizer split rule (the o200k pattern in Meta's tokenizer.json).
LLAMA4_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A representative run of Llama 4's special tokens, in Meta's order (ids follow the BPE
# vocabulary here; in the real tokenizer they start at 200000).
LLAMA4_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|step|>",
    "<|text_post_train_reserved_special_token_0|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|finetune_right_pad|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|patch|>",
    "<|image|>",
]

# Written for this kit, in the shape of Llama 4 Instruct's: BOS, an optional system
# message, every message as header + trimmed content + <|eot|>, then an open assistant
# header when a reply is wanted.
LLAMA4_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] | trim }}"
    "{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] | trim }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|eot|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}"
    "{%- endif %}"
)

# Extra training text so that the two split rules disagree on many pieces.
LLAMA4_EXTRA_CORPUS = [
    "They'll say it's done; we'd rather you'd checked. I'm sure they've MISSED it, OK?",
    "TheQuickBrownFox, XMLHttpRequest, getElementById and PyTorchModel are CamelCase words.",
    "WE'LL SEE. You'LL see. DON'T panic; it'S fine, isn't it? HTTPServerError.",
]


@dataclass(frozen=True)
class Llama4Spec:
    variant: str = "scout"            # "scout" or "maverick"
    vision: bool = True               # Llama4ForConditionalGeneration with a vision tower
    dtype: str = "float32"            # safetensors dtype: "float32" or "bfloat16"
    seed: int = 0
    std: float | None = None          # weight std; None: 0.05 (scout), 0.1 (maverick, narrower)
    num_layers: int = 4
    max_shard_size: str | None = None  # e.g. "2MB" to get several shards
    head_scale: float = 1.0           # lm_head weights x this (1: transformers init)
    config_style: str = "v5"          # "v5": rope_parameters; "meta": rope_theta + rope_scaling
    text_overrides: tuple = field(default_factory=tuple)  # ((key, value), ...) into text_config
    # images (tests/kit/llama4_vision.py): a vision tower that mtmd can run, the tile
    # separator tokens, Llama 4 Instruct's own chat template and a preprocessor_config.json
    vision_kit: bool = False
    vision_overrides: tuple = field(default_factory=tuple)  # ((key, value), ...) into vision_config

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=str)


def text_config_for(spec: Llama4Spec, vocab_size: int, special_ids: dict[str, int]) -> dict[str, Any]:
    std = spec.std if spec.std is not None else (0.05 if spec.variant == "scout" else 0.1)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        num_hidden_layers=spec.num_layers,
        num_experts_per_tok=1,
        initializer_range=std,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=special_ids["<|begin_of_text|>"],
        eos_token_id=[special_ids["<|end_of_text|>"], special_ids["<|eom|>"], special_ids["<|eot|>"]],
        pad_token_id=special_ids["<|finetune_right_pad|>"],
        attention_chunk_size=8192,
        no_rope_layer_interval=4,
        tie_word_embeddings=False,
    )
    if spec.variant == "scout":
        common.update(
            hidden_size=256, intermediate_size=256, intermediate_size_mlp=512,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            num_local_experts=4, interleave_moe_layer_step=1, use_qk_norm=True,
        )
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif spec.variant == "maverick":
        common.update(
            hidden_size=64, intermediate_size=64, intermediate_size_mlp=128,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            num_local_experts=128, interleave_moe_layer_step=2, use_qk_norm=False,
        )
        rope = {"rope_type": "default", "rope_theta": 500000.0}
    else:
        raise ValueError(f"unknown variant {spec.variant!r}")
    common["rope_parameters"] = rope
    common.update(dict(spec.text_overrides))
    return common


def _vision_config() -> dict[str, Any]:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                image_size=28, patch_size=14, vision_output_dim=64, projector_input_dim=64,
                projector_output_dim=64)


def build_llama4_tokenizer(out_dir: Path, vision_kit: bool = False) -> tuple[int, dict[str, int]]:
    """Train the tiny Llama-4-style tokenizer into `out_dir`; returns (token count, ids of
    the special tokens). `vision_kit`: with the tile separators and Llama 4 Instruct's
    template (tests/kit/llama4_vision.py)."""
    from tests.kit.tokenizer import build_tokenizer

    specials, template = LLAMA4_SPECIAL_TOKENS, LLAMA4_CHAT_TEMPLATE
    if vision_kit:
        from tests.kit.llama4_vision import TILE_TOKENS, instruct_template

        specials, template = LLAMA4_SPECIAL_TOKENS + TILE_TOKENS, instruct_template()
    n_tokens = build_tokenizer(
        out_dir,
        pattern=LLAMA4_PATTERN,
        special_tokens=specials,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
        chat_template=template,
        extra_corpus=LLAMA4_EXTRA_CORPUS,
    )
    first = n_tokens - len(specials)
    return n_tokens, {t: first + i for i, t in enumerate(specials)}


def _to_meta_style(cfg: dict[str, Any]) -> dict[str, Any]:
    """Rewrite transformers 5's `rope_parameters` into the `rope_theta` + `rope_scaling`
    fields that Meta's published config.json files carry."""
    tc = cfg.get("text_config", cfg)
    rope = tc.pop("rope_parameters", None) or {}
    tc["rope_theta"] = rope.get("rope_theta", 500000.0)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    tc["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    for k in ("layer_types", "moe_layers"):  # not in Meta's files; derived by readers
        tc.pop(k, None)
    return cfg


def build_llama4_checkpoint(out_dir: Path, spec: Llama4Spec = Llama4Spec()) -> Path:
    import torch
    from transformers import Llama4Config, Llama4ForCausalLM, Llama4ForConditionalGeneration, Llama4TextConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens, special_ids = build_llama4_tokenizer(out_dir, vision_kit=spec.vision_kit)
    vocab_size = ((n_tokens + 63) // 64) * 64 + 64  # padded, as the real models are
    tc = text_config_for(spec, vocab_size, special_ids)
    torch.manual_seed(spec.seed)
    if spec.vision:
        if spec.vision_kit:
            from tests.kit.llama4_vision import vision_config

            vc, image_token = vision_config(dict(spec.vision_overrides)), special_ids["<|patch|>"]
        else:
            vc, image_token = _vision_config(), special_ids["<|image|>"]
        config = Llama4Config(text_config=tc, vision_config=vc,
                              boi_token_index=special_ids["<|image_start|>"],
                              eoi_token_index=special_ids["<|image_end|>"],
                              image_token_index=image_token)
        model = Llama4ForConditionalGeneration(config)
    else:
        model = Llama4ForCausalLM(Llama4TextConfig(**tc))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(spec.seed + 1)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") and param.dim() == 1:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith("lm_head.weight"):
                param.mul_(spec.head_scale)
            elif spec.vision_kit and name.startswith("vision_model.") and name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))  # a lost bias shows
    if spec.dtype != "float32":
        import warnings

        with warnings.catch_warnings():  # the vision rotary table is complex: not a weight
            warnings.simplefilter("ignore", UserWarning)
            model = model.to(getattr(torch, spec.dtype))
    kwargs = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    if spec.vision_kit:
        from tests.kit.llama4_vision import write_preprocessor_config

        write_preprocessor_config(out_dir, config.vision_config)
    if spec.config_style == "meta":
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps(_to_meta_style(cfg), indent=2) + "\n")
    return out_dir


def load_text_model(ckpt_dir: Path):
    """The text model of a kit checkpoint in float32, eager attention: the reference."""
    import torch
    from transformers import AutoConfig, Llama4ForCausalLM, Llama4ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = AutoConfig.from_pretrained(ckpt_dir)
    if cfg.model_type == "llama4":
        full = Llama4ForConditionalGeneration.from_pretrained(ckpt_dir, dtype=torch.float32,
                                                              attn_implementation="eager")
        model = full.language_model
    else:
        model = Llama4ForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def reference_logits(ckpt_dir: Path, token_ids: list[int]):
    """transformers' float32 logits for every position of `token_ids` (numpy [n, vocab])."""
    import torch

    model = load_text_model(ckpt_dir)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_ids]), use_cache=False)
    return out.logits[0].float().numpy()


def build_large_llama4_checkpoint(out_dir: Path, *, n_layers: int = 2, hidden: int = 1024, expert_ffn: int = 2048,
                                  dense_ffn: int = 4096, n_experts: int = 16, moe_step: int = 1,
                                  seed: int = 0) -> Path:
    """A Scout-shaped bf16 checkpoint of a few hundred MB written with numpy alone (no
    torch: fast, and no model in memory), for memory measurements. Values are random
    (std 0.02); the tokenizer is the kit's. One shard per layer, as Meta's are split."""
    import numpy as np

    from llamactl.convert.common import float32_to_bf16

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens, special_ids = build_llama4_tokenizer(out_dir)
    vocab = ((n_tokens + 63) // 64) * 64 + 64
    heads, kv_heads, head_dim = hidden // 128, max(1, hidden // 512), 128
    rng = np.random.default_rng(seed)

    def rand(shape):
        return float32_to_bf16((rng.standard_normal(shape, dtype=np.float32) * 0.02))

    def ones(shape):
        return float32_to_bf16(np.ones(shape, dtype=np.float32))

    def write_shard(path: Path, tensors: dict[str, tuple[tuple[int, ...], Any]]) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, (shape, _) in tensors.items():
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little"))
            fh.write(raw)
            for name, (shape, make) in tensors.items():
                if len(shape) == 3:  # expert by expert: never a whole expert tensor in memory
                    for _ in range(shape[0]):
                        fh.write(make(shape[1:]).tobytes())
                else:
                    fh.write(make(shape).tobytes())

    p = "language_model.model."
    shards: list[tuple[str, dict]] = []
    first = {p + "embed_tokens.weight": ((vocab, hidden), rand), p + "norm.weight": ((hidden,), ones),
             "language_model.lm_head.weight": ((vocab, hidden), rand),
             "multi_modal_projector.linear_1.weight": ((hidden, 64), rand),
             "vision_model.patch_embedding.linear.weight": ((32, 588), rand)}
    shards.append(("embed", first))
    for i in range(n_layers):
        lp = f"{p}layers.{i}."
        t = {lp + "input_layernorm.weight": ((hidden,), ones), lp + "post_attention_layernorm.weight": ((hidden,), ones),
             lp + "self_attn.q_proj.weight": ((heads * head_dim, hidden), rand),
             lp + "self_attn.k_proj.weight": ((kv_heads * head_dim, hidden), rand),
             lp + "self_attn.v_proj.weight": ((kv_heads * head_dim, hidden), rand),
             lp + "self_attn.o_proj.weight": ((hidden, heads * head_dim), rand)}
        f = lp + "feed_forward."
        if (i + 1) % moe_step == 0:
            t.update({f + "router.weight": ((n_experts, hidden), rand),
                      f + "experts.gate_up_proj": ((n_experts, hidden, 2 * expert_ffn), rand),
                      f + "experts.down_proj": ((n_experts, expert_ffn, hidden), rand),
                      f + "shared_expert.gate_proj.weight": ((expert_ffn, hidden), rand),
                      f + "shared_expert.up_proj.weight": ((expert_ffn, hidden), rand),
                      f + "shared_expert.down_proj.weight": ((hidden, expert_ffn), rand)})
        else:
            t.update({f + "gate_proj.weight": ((dense_ffn, hidden), rand),
                      f + "up_proj.weight": ((dense_ffn, hidden), rand),
                      f + "down_proj.weight": ((hidden, dense_ffn), rand)})
        shards.append((f"layer{i}", t))
    weight_map = {}
    for k, (_, tensors) in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out_dir / name, tensors)
        weight_map.update({n: name for n in tensors})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    text = dict(
        model_type="llama4_text", vocab_size=vocab, hidden_size=hidden, intermediate_size=expert_ffn,
        intermediate_size_mlp=dense_ffn, num_hidden_layers=n_layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, num_local_experts=n_experts, num_experts_per_tok=1,
        interleave_moe_layer_step=moe_step, use_qk_norm=n_experts != 128, rms_norm_eps=1e-5,
        max_position_embeddings=10485760, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=special_ids["<|begin_of_text|>"], eos_token_id=special_ids["<|eot|>"],
        attention_chunk_size=8192, no_rope_layer_interval=4, hidden_act="silu", torch_dtype="bfloat16",
    )
    config = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "text_config": text,
              "vision_config": {"model_type": "llama4_vision_model"}, "torch_dtype": "bfloat16"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
