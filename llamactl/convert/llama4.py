"""Llama 4 (Scout, Maverick): safetensors checkpoint -> GGUF, architecture `llama4`.

What llama.cpp's `llama4` loader expects, and how a Hugging Face checkpoint maps onto it:

- Meta publishes `Llama4ForConditionalGeneration` checkpoints (config.json `model_type:
  llama4`): the language model's tensors live under `language_model.`, the vision tower
  under `vision_model.` and the projector under `multi_modal_projector.`. Only the text
  model goes into this GGUF; the vision tensors go into a separate projector GGUF for
  llama.cpp's mtmd when asked (llamactl.convert.llama4_vision), else they are left out
  and listed in the result.
  A text-only `Llama4ForCausalLM` (`llama4_text`) converts the same way.
- Hyper-parameters come from `text_config`. Every `interleave_moe_layer_step`-th layer is
  MoE (Scout: every layer; Maverick: every second), the others a dense FFN of width
  `intermediate_size_mlp` (the GGUF's `feed_forward_length`); experts and the shared
  expert have width `intermediate_size` (`expert_feed_forward_length`).
- Routed experts are stored fused and transposed relative to linear layers:
  `experts.gate_up_proj` is [experts, hidden, 2*ffn] (gate in the first half of the last
  axis, up in the second) and `experts.down_proj` is [experts, ffn, hidden]. llama.cpp
  wants `ffn_gate_exps`/`ffn_up_exps` as [experts, ffn, hidden] and `ffn_down_exps` as
  [experts, hidden, ffn] (numpy order): each half is transposed per expert. The data is
  streamed one expert at a time from the memory-mapped shard, so peak memory stays near
  one expert's slice, well under one layer's expert tensor.
- No q/k rotary permutation: transformers' Llama 4 applies RoPE to adjacent pairs
  (complex multiplication), which is llama.cpp's native layout (Llama 3's checkpoints
  rotate halves and need the permutation; these do not — the parity tests show both).
- llama.cpp derives some things from the architecture rather than from keys: RoPE is
  skipped on every 4th layer (`no_rope_layers`) and the QK L2 norm is applied unless the
  model has exactly 128 experts; a checkpoint that differs is refused (its answers would
  differ on any prompt). Chunked attention of 8192 and the temperature tuning of the NoPE
  layers (floor 8192, scale 0.1) are fixed too; a checkpoint that differs there is
  converted with a note, since only prompts past 8192 tokens see it.
- `rope_scaling` of type `llama3` (Scout) becomes the `rope_freqs` tensor.
- The tokenizer is written with `tokenizer.ggml.pre = llama4` (llama.cpp's o200k-style
  split rule), Llama 4's special tokens as control tokens, EOT `<|eot|>`, EOM `<|eom|>`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llamactl.errors import IntegrityError, LlamactlError

MODEL_TYPES = ("llama4", "llama4_text")
ARCH = "llama4"
PRE_TOKENIZER = "llama4"
# Prefixes of the multimodal checkpoint's non-text parts (left out of the text GGUF).
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")
# Fixed in llama.cpp's llama4 loader (no GGUF keys for them).
LLAMACPP_NO_ROPE_INTERVAL = 4
LLAMACPP_CHUNK = 8192
LLAMACPP_ATTN_FLOOR_SCALE = 8192
LLAMACPP_ATTN_SCALE = 0.1
LLAMACPP_NO_QK_NORM_EXPERTS = 128


@dataclass
class Llama4HParams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff_dense: int           # intermediate_size_mlp (Maverick's dense layers)
    n_ff_exp: int             # intermediate_size (each routed expert and the shared expert)
    n_expert: int
    n_expert_used: int
    moe_step: int             # interleave_moe_layer_step
    rms_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    context_length: int
    vocab_size: int
    use_qk_norm: bool
    tied: bool
    notes: list[str] = field(default_factory=list)   # differences llama.cpp will show, for people

    def is_moe(self, layer: int) -> bool:
        return (layer + 1) % self.moe_step == 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: `text_config` of a multimodal checkpoint, or the
    config itself for `llama4_text`."""
    tc = config.get("text_config")
    if config.get("model_type") == "llama4":
        if not isinstance(tc, dict):
            raise IntegrityError("config.json has model_type llama4 but no text_config")
        return tc
    return config


def _rope(tc: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers 5's `rope_parameters` or the
    `rope_theta` + `rope_scaling` of Meta's config.json files; only `llama3` scaling (or
    none) is supported."""
    from llamactl.convert.llama import rope_config

    theta, scaling = rope_config(tc)
    if scaling is None:
        return theta, None
    rtype = scaling.get("rope_type", scaling.get("type"))
    if rtype != "llama3":
        raise LlamactlError(f"rope scaling of type {rtype!r} is not supported for Llama 4 "
                            "(supported: none, llama3)")
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if key not in scaling:
            raise IntegrityError(f"config.json: llama3 rope scaling without {key}")
    return theta, dict(scaling)


def hparams_from_config(config: dict[str, Any]) -> Llama4HParams:
    """Read and check the text model's hyper-parameters. Raises a LlamactlError for a
    checkpoint that llama.cpp's llama4 graph cannot reproduce."""
    if config.get("quantization_config"):
        qm = (config.get("quantization_config") or {}).get("quant_method", "quantized")
        raise LlamactlError(f"this checkpoint is already quantized ({qm}); convert the bf16 original",
                            hint="e.g. meta-llama/Llama-4-Maverick-17B-128E-Instruct, not its -FP8 variant")
    tc = text_config(config)

    def need(key: str) -> Any:
        if key not in tc or tc[key] is None:
            raise IntegrityError(f"config.json: text_config has no {key}")
        return tc[key]

    n_layer = int(need("num_hidden_layers"))
    n_embd = int(need("hidden_size"))
    n_head = int(need("num_attention_heads"))
    n_head_kv = int(tc.get("num_key_value_heads") or n_head)
    head_dim = int(tc.get("head_dim") or n_embd // n_head)
    n_expert = int(need("num_local_experts"))
    step = int(tc.get("interleave_moe_layer_step") or 1)
    if n_expert < 1:
        raise LlamactlError("a Llama 4 model without experts (num_local_experts 0) is not supported")
    if step < 1:
        raise IntegrityError(f"config.json: interleave_moe_layer_step {step}")
    moe_layers = tc.get("moe_layers")
    expect_moe = list(range(step - 1, n_layer, step))
    if moe_layers is not None and list(moe_layers) != expect_moe:
        raise LlamactlError(f"MoE layers {list(moe_layers)} do not follow interleave step {step}; "
                            "llama.cpp places MoE layers only by the step")
    act = tc.get("hidden_act", "silu")
    if act != "silu":
        raise LlamactlError(f"hidden_act {act!r} is not supported (llama.cpp's llama4 uses silu)")
    if tc.get("attention_bias"):
        raise LlamactlError("attention biases are not supported by llama.cpp's llama4 graph")

    # NoPE layers: llama.cpp skips RoPE on every 4th layer (1-based), always.
    interval = int(tc.get("no_rope_layer_interval") or LLAMACPP_NO_ROPE_INTERVAL)
    no_rope = tc.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n_layer)]
    expect_rope = [int((i + 1) % LLAMACPP_NO_ROPE_INTERVAL != 0) for i in range(n_layer)]
    if [int(bool(x)) for x in list(no_rope)[:n_layer]] != expect_rope:
        raise LlamactlError("this checkpoint's no-RoPE layers differ from llama.cpp's fixed pattern "
                            "(RoPE skipped on every 4th layer); it would not give the same answers")
    # differences that only show past thousands of tokens: converted, with a note
    long_context: list[str] = []
    chunk = tc.get("attention_chunk_size", LLAMACPP_CHUNK)   # transformers' default when absent
    if chunk is None or int(chunk) != LLAMACPP_CHUNK:
        long_context.append(f"attention chunks of {chunk} tokens (llama.cpp: {LLAMACPP_CHUNK})")
    if not tc.get("attn_temperature_tuning", True):
        long_context.append("no attention temperature tuning (llama.cpp applies it on NoPE layers)")
    elif (int(tc.get("floor_scale", LLAMACPP_ATTN_FLOOR_SCALE)) != LLAMACPP_ATTN_FLOOR_SCALE
          or abs(float(tc.get("attn_scale", LLAMACPP_ATTN_SCALE)) - LLAMACPP_ATTN_SCALE) > 1e-9):
        long_context.append(f"attention temperature floor_scale {tc.get('floor_scale')} and attn_scale "
                            f"{tc.get('attn_scale')} (llama.cpp: {LLAMACPP_ATTN_FLOOR_SCALE} and {LLAMACPP_ATTN_SCALE})")
    notes = [f"this checkpoint has {what}: llama.cpp's answers will differ from the original's on prompts "
             f"longer than {min(LLAMACPP_CHUNK, int(chunk or LLAMACPP_CHUNK))} tokens" for what in long_context]
    use_qk_norm = bool(tc.get("use_qk_norm", True))
    if use_qk_norm != (n_expert != LLAMACPP_NO_QK_NORM_EXPERTS):
        raise LlamactlError(
            f"use_qk_norm is {str(use_qk_norm).lower()} with {n_expert} experts: llama.cpp has no GGUF key "
            f"for Llama 4's QK norm and applies it unless a model has exactly {LLAMACPP_NO_QK_NORM_EXPERTS} "
            "experts, so this checkpoint would not give the same answers")
    theta, scaling = _rope(tc)
    tied = bool(tc.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    return Llama4HParams(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
        n_ff_dense=int(tc.get("intermediate_size_mlp") or need("intermediate_size")),
        n_ff_exp=int(need("intermediate_size")),
        n_expert=n_expert, n_expert_used=int(tc.get("num_experts_per_tok") or 1),
        moe_step=step, rms_eps=float(tc.get("rms_norm_eps", 1e-5)),
        rope_theta=theta, rope_scaling=scaling,
        context_length=int(tc.get("max_position_embeddings") or 131072),
        vocab_size=int(need("vocab_size")), use_qk_norm=use_qk_norm, tied=tied, notes=notes,
    )


def llama3_rope_freqs(hp: Llama4HParams):
    """llama.cpp's `rope_freqs` for `llama3` rope scaling (the same as Llama 3.1's)."""
    from llamactl.convert.llama import llama3_rope_factors

    return llama3_rope_factors(hp.rope_theta, hp.head_dim, hp.rope_scaling or {})


# ------------------------------------------------------------------------- tensor plan

def split_names(names: list[str]) -> tuple[str, str, list[str]]:
    """(text prefix, lm head name, vision/projector tensor names) of a checkpoint."""
    if any(n.startswith("language_model.") for n in names):
        prefix, head = "language_model.model.", "language_model.lm_head.weight"
    else:
        prefix, head = "model.", "lm_head.weight"
    vision = sorted(n for n in names if n.startswith(VISION_PREFIXES))
    return prefix, head, vision


def _expect(t, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise IntegrityError(f"tensor {t.name} has shape {list(t.shape)}, config.json implies {list(shape)}: "
                             "the config does not match the weights")


TRANSPOSE_TILE = 512


def transpose_tiled(x):
    """A C-contiguous copy of `x.T` (2-D), copied tile by tile: about twice as fast as
    numpy's plain strided copy on real expert slices (5120 x 8192), whose rows do not fit
    the cache."""
    import numpy as np

    rows, cols = x.shape
    out = np.empty((cols, rows), dtype=x.dtype)
    step = TRANSPOSE_TILE
    for i in range(0, rows, step):
        for j in range(0, cols, step):
            out[j:j + step, i:i + step] = x[i:i + step, j:j + step].T
    return out


def expert_job(t, gguf_name: str, ggml_type: str, part: str, n_ff: int, transpose: bool = True):
    """Routed experts of one layer, streamed expert by expert from the mapped shard.

    part "gate"/"up": `gate_up_proj` [E, hidden, 2*ff] -> [E, ff, hidden] (a half of the
    last axis, transposed); part "down": `down_proj` [E, ff, hidden] -> [E, hidden, ff].
    transpose=False (tests only) writes each expert's block untransposed, reshaped to the
    output shape: the classic bug of treating the fused tensors like linear weights."""
    from llamactl.convert.common import MappedTensor, TensorJob, convert_block

    n_exp, rows, cols = t.shape
    if part in ("gate", "up"):
        lo, hi = (0, n_ff) if part == "gate" else (n_ff, 2 * n_ff)
        out_shape = (n_exp, n_ff, rows)
    elif part == "down":
        lo, hi = 0, cols
        out_shape = (n_exp, cols, rows)
    else:  # pragma: no cover - programming error
        raise ValueError(part)
    item = 4 if t.dtype == "F32" else 2
    per_expert = rows * cols * item

    def blocks() -> Iterator[Any]:
        import numpy as np

        with MappedTensor(t) as m:
            for e in range(n_exp):
                block = m.array[e, :, lo:hi]            # [in, out]: transposed vs linear weights
                if transpose:
                    block = transpose_tiled(block)      # [out rows, in], contiguous
                else:
                    block = np.ascontiguousarray(block).reshape(out_shape[1:])
                yield convert_block(block, t.dtype, ggml_type)
                del block
                m.release(e * per_expert, per_expert)

    return TensorJob(gguf_name, out_shape, ggml_type, blocks, source=f"{t.name}[{part}]")


@dataclass
class Llama4Plan:
    hp: Llama4HParams
    jobs: list  # list[TensorJob]
    skipped: list[str]          # vision tower and projector tensors left out
    n_params: int
    n_expert_params: int        # one expert's parameters summed over layers


def plan_tensors(ckpt, hp: Llama4HParams, outtype: str, *, expert_layout: str = "llama.cpp",
                 permute_qk: bool = False) -> Llama4Plan:
    """Every output tensor as a streaming job, in llama.cpp's order; checks that the
    checkpoint's text tensors are exactly what the config implies."""
    from llamactl.convert.common import array_job, ggml_type_for, source_job

    tensors = ckpt.tensors
    prefix, head, vision = split_names(list(tensors))
    used: set[str] = set()
    jobs = []
    mat = ggml_type_for(outtype, 2)

    def get(name: str, shape: tuple[int, ...]):
        t = tensors.get(name)
        if t is None:
            raise IntegrityError(f"tensor {name} is missing from the checkpoint",
                                 hint="download every model-*.safetensors shard again")
        _expect(t, shape)
        used.add(name)
        return t

    def plain(name: str, gguf_name: str, shape: tuple[int, ...], ggml_type: str | None = None) -> None:
        t = get(name, shape)
        jobs.append(source_job(t, gguf_name, ggml_type or ggml_type_for(outtype, len(shape))))

    E, H, V = hp.n_expert, hp.n_embd, hp.vocab_size
    q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    plain(prefix + "embed_tokens.weight", "token_embd.weight", (V, H))
    if hp.rope_scaling is not None:
        jobs.append(array_job("rope_freqs.weight", llama3_rope_freqs(hp), "F32"))
    plain(prefix + "norm.weight", "output_norm.weight", (H,))
    if head in tensors:
        plain(head, "output.weight", (V, H))
    elif not hp.tied:
        raise IntegrityError(f"tensor {head} is missing and the config does not tie the embeddings")
    n_expert_params = 0
    for i in range(hp.n_layer):
        p, b = f"{prefix}layers.{i}.", f"blk.{i}."
        plain(p + "input_layernorm.weight", b + "attn_norm.weight", (H,))
        if permute_qk:  # wrong for Llama 4 (tests only): Llama 3's rotate-half reordering
            from llamactl.convert.llama import rope_row_permutation

            for proj, gname, rows, heads in (("q", "attn_q", q_dim, hp.n_head), ("k", "attn_k", kv_dim, hp.n_head_kv)):
                t = get(p + f"self_attn.{proj}_proj.weight", (rows, H))
                jobs.append(source_job(t, b + f"{gname}.weight", mat, rope_row_permutation(rows, heads)))
        else:
            plain(p + "self_attn.q_proj.weight", b + "attn_q.weight", (q_dim, H))
            plain(p + "self_attn.k_proj.weight", b + "attn_k.weight", (kv_dim, H))
        plain(p + "self_attn.v_proj.weight", b + "attn_v.weight", (kv_dim, H))
        plain(p + "self_attn.o_proj.weight", b + "attn_output.weight", (H, q_dim))
        plain(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", (H,))
        f = p + "feed_forward."
        if hp.is_moe(i):
            ff = hp.n_ff_exp
            # the router stays F32 (llama.cpp's converters keep it so; Q4_K_M does too)
            plain(f + "router.weight", b + "ffn_gate_inp.weight", (E, H), "F32")
            gate_up = get(f + "experts.gate_up_proj", (E, H, 2 * ff))
            down = get(f + "experts.down_proj", (E, ff, H))
            gate, up = ("up", "gate") if expert_layout == "swap_gate_up" else ("gate", "up")
            transpose = expert_layout != "untransposed"
            jobs.append(expert_job(gate_up, b + "ffn_gate_exps.weight", mat, gate, ff, transpose))
            jobs.append(expert_job(down, b + "ffn_down_exps.weight", mat, "down", ff, transpose))
            jobs.append(expert_job(gate_up, b + "ffn_up_exps.weight", mat, up, ff, transpose))
            n_expert_params += 3 * H * ff
            plain(f + "shared_expert.gate_proj.weight", b + "ffn_gate_shexp.weight", (ff, H))
            plain(f + "shared_expert.down_proj.weight", b + "ffn_down_shexp.weight", (H, ff))
            plain(f + "shared_expert.up_proj.weight", b + "ffn_up_shexp.weight", (ff, H))
        else:
            ff = hp.n_ff_dense
            plain(f + "gate_proj.weight", b + "ffn_gate.weight", (ff, H))
            plain(f + "down_proj.weight", b + "ffn_down.weight", (H, ff))
            plain(f + "up_proj.weight", b + "ffn_up.weight", (ff, H))
    unknown = sorted(n for n in tensors if n not in used and n not in vision and n != head)
    if unknown:
        raise IntegrityError(f"{len(unknown)} tensor(s) in the checkpoint are not part of a Llama 4 text model "
                             f"as its config.json describes it (first: {unknown[0]})",
                             hint="is config.json from the same model as the weights?")
    n_params = sum(j.n_elements for j in jobs)
    return Llama4Plan(hp, jobs, vision, n_params, n_expert_params)


# ---------------------------------------------------------------------------- metadata

def write_hparams(writer: Any, hp: Llama4HParams) -> None:
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff_dense)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_expert_count(hp.n_expert)
    writer.add_expert_used_count(hp.n_expert_used)
    writer.add_expert_feed_forward_length(hp.n_ff_exp)
    writer.add_interleave_moe_layer_step(hp.moe_step)


def size_label(plan: Llama4Plan) -> str:
    import gguf

    shared = plan.n_params - plan.n_expert_params * plan.hp.n_expert
    return gguf.size_label(plan.n_params, shared, plan.n_expert_params, plan.hp.n_expert)


def convert(ckpt, out_path: Path, outtype: str, progress=None, *, name: str | None = None,
            expert_layout: str = "llama.cpp", permute_qk: bool = False,
            mmproj: Path | None = None, mmproj_optional: bool = False,
            patch_layout: str = "chw") -> dict[str, Any]:
    """Convert an opened Llama 4 checkpoint (llamactl.convert.common.Checkpoint) to a text
    GGUF at `out_path`, and its vision tower and projector to a projector GGUF at `mmproj`
    (llamactl.convert.llama4_vision) when given. Both plans are checked before anything is
    written; the projector is written first, and removed again if the text model fails.
    `expert_layout`, `permute_qk` and `patch_layout` exist only so that tests can write
    deliberately wrong files ("swap_gate_up", "untransposed"; Llama 3's q/k permutation;
    "hwc" patches) and show that the parity checks catch them. `mmproj_optional`: a vision
    tower that mtmd cannot run (or none) means a note and the text model alone, not an error
    (the default projector; an explicit --mmproj is never optional)."""
    from llamactl.convert import common

    hp = hparams_from_config(ckpt.config)
    plan = plan_tensors(ckpt, hp, outtype, expert_layout=expert_layout, permute_qk=permute_qk)
    vplan = None
    not_written: str | None = None
    if mmproj is not None:
        from llamactl.convert import llama4_vision

        try:
            if not plan.skipped:
                raise LlamactlError("this checkpoint has no vision tower: there is no projector to write",
                                    hint="leave out --mmproj")
            vplan = llama4_vision.plan_tensors(ckpt, llama4_vision.vision_hparams(ckpt.config, ckpt.path),
                                               outtype, patch_layout=patch_layout)
        except LlamactlError as exc:
            if not mmproj_optional:
                raise
            not_written = str(exc)
    tok = common.load_bpe_tokenizer(ckpt.path, hp.vocab_size, eot_token="<|eot|>", eom_token="<|eom|>",
                                    config=text_config(ckpt.config))
    label = size_label(plan)

    def add_metadata(writer: Any) -> None:
        common.write_general(writer, ckpt.path, ckpt.config, outtype, name=name)
        writer.add_size_label(label)
        write_hparams(writer, hp)
        common.write_tokenizer(writer, tok, PRE_TOKENIZER)

    projector = None
    if vplan is not None:
        from llamactl.convert import llama4_vision

        projector = llama4_vision.convert(ckpt, Path(mmproj), outtype, None, name=name, plan=vplan)
    try:
        size = common.write_gguf(Path(out_path), ARCH, add_metadata, plan.jobs, progress)
    except BaseException:
        if projector is not None:
            Path(mmproj).unlink(missing_ok=True)
        raise
    skipped = set(plan.skipped)
    notes = list(hp.notes)
    if projector is not None:
        notes.append(f"wrote the vision projector to {mmproj} ({projector['n_tensors']} tensors, "
                     f"{projector['bytes'] / 2**20:.1f} MiB); `chat --image` finds it beside the model")
    elif plan.skipped:
        n_bytes = sum(ckpt.tensors[n].nbytes for n in plan.skipped)
        notes.append(f"left out the vision tower and projector ({len(plan.skipped)} tensors, "
                     f"{n_bytes / 2**20:.1f} MiB): this GGUF is the text model only")
        if not_written:
            notes.append(f"no projector written: {not_written}")
    return {
        "architecture": ARCH,
        "n_tensors": len(plan.jobs),
        "n_params": plan.n_params,
        "bytes": size,
        "size_label": label,
        "vocab_size": hp.vocab_size,
        "experts": hp.n_expert,
        "experts_used": hp.n_expert_used,
        "moe_layers": [i for i in range(hp.n_layer) if hp.is_moe(i)],
        "rope_freqs": hp.rope_scaling is not None,
        "skipped_tensors": plan.skipped,
        "largest_tensor_bytes": max((t.nbytes for n, t in ckpt.tensors.items() if n not in skipped), default=0),
        "notes": notes,
        "mmproj": projector,
    }
