"""Llama 4's vision encoder and projector: safetensors -> a projector GGUF for llama.cpp's mtmd.

A Meta `Llama4ForConditionalGeneration` checkpoint holds, beside the language model, a
ViT (`vision_model.`) and a one-matrix projector (`multi_modal_projector.linear_1`). mtmd
reads them from a separate GGUF of architecture `clip` with `clip.projector_type llama4`
(its `clip_graph_llama4`). What that graph computes, and so how the tensors are laid out:

- Patches: transformers unfolds each 14x14 patch channel-first ((channel, row, column),
  `nn.Unfold`) and applies `patch_embedding.linear` [hidden, 3*14*14]; mtmd reshapes
  `v.patch_embd.weight` to (column, row, channel, hidden) in ggml order, which is the same
  memory as that matrix: it is written as it is.
- The [CLS] embedding is appended after the patches (not before), then the learned
  position embedding (one row per patch plus one for [CLS]) is added, then `pre_ln`.
- Each layer: LayerNorm (`ln1`), attention with biases and a 2-D RoPE of theta 10000
  (mtmd fixes the theta; transformers reads it from the config) on adjacent pairs,
  LayerNorm (`ln2`), a GELU MLP with biases (`ffn_up`, `ffn_down`).
- `post_ln`, [CLS] dropped, pixel shuffle by `1/pixel_shuffle_ratio` (2: 4 patches become
  one token of 4x the width), the adapter MLP (`mm.model.mlp.1/2`, GELU after each, no
  biases), then the projector into the text model's width (`mm.model.fc`).

Refused, because mtmd's graph cannot reproduce them: another activation than GELU, a RoPE
theta other than 10000, projector biases, a pixel-shuffle ratio that is not 1/n, non-square
tiles, an adapter width that is not hidden/ratio^2. The preprocessing settings
(`preprocessor_config.json`: mean, std, tile size, `max_patches`) are written as keys;
mtmd reads mean and std, llamactl reads the tile count (`clip.vision.preproc_max_tiles`).

Tensor types: 1-D tensors, the [CLS] and position embeddings stay F32; the patch
embedding is F16 for f16 output and F32 otherwise (ggml's im2col path here takes F16 or
F32); every other matrix takes the output type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamactl.errors import IntegrityError, LlamactlError

ARCH = "clip"
PROJECTOR_TYPE = "llama4"
MTMD_ROPE_THETA = 10000.0        # fixed in mtmd's llama4 graph
DEFAULT_MAX_TILES = 16           # Llama4ImageProcessor's max_patches (and Meta's configs)
PREFIXES = ("vision_model.", "multi_modal_projector.")

# GGUF keys mtmd reads (clip-impl.h), plus the tile budget llamactl reads.
K_PROJ_TYPE = "clip.projector_type"
K_HAS_VISION = "clip.has_vision_encoder"
K_USE_GELU = "clip.use_gelu"
K_PROJ_DIM = "clip.vision.projection_dim"
K_IMAGE_SIZE = "clip.vision.image_size"
K_PATCH_SIZE = "clip.vision.patch_size"
K_N_EMBD = "clip.vision.embedding_length"
K_N_FF = "clip.vision.feed_forward_length"
K_N_BLOCK = "clip.vision.block_count"
K_N_HEAD = "clip.vision.attention.head_count"
K_EPS = "clip.vision.attention.layer_norm_epsilon"
K_MEAN = "clip.vision.image_mean"
K_STD = "clip.vision.image_std"
K_SCALE = "clip.vision.projector.scale_factor"
K_MAX_TILES = "clip.vision.preproc_max_tiles"


@dataclass
class VisionHParams:
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    image_size: int              # the tile's side in pixels
    patch_size: int
    eps: float
    scale: int                   # pixel-shuffle factor per side (1 / pixel_shuffle_ratio)
    adapter_in: int              # n_embd * scale^2
    adapter_out: int             # projector_input_dim == projector_output_dim
    text_embd: int
    image_mean: list[float]
    image_std: list[float]
    max_tiles: int

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        return (side // self.scale) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, tokens_per_tile=self.tokens_per_tile)


def has_vision(config: dict[str, Any], tensor_names) -> bool:
    return isinstance(config.get("vision_config"), dict) and any(
        n.startswith(PREFIXES) for n in tensor_names)


def _preprocessor(src_dir: Path) -> dict[str, Any]:
    """preprocessor_config.json (or processor_config.json's image_processor), {} if absent."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = Path(src_dir) / name
        if path.is_file():
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise IntegrityError(f"{path} is not valid JSON: {exc}") from exc
            if key and isinstance(cfg.get(key), dict):
                cfg = cfg[key]
            if isinstance(cfg, dict):
                return cfg
    return {}


def vision_hparams(config: dict[str, Any], src_dir: Path) -> VisionHParams:
    """Read and check the vision tower's settings; refuse what mtmd cannot reproduce."""
    vc = config.get("vision_config")
    if not isinstance(vc, dict):
        raise IntegrityError("config.json has no vision_config")
    tc = config.get("text_config") or {}

    def need(key: str) -> Any:
        if vc.get(key) is None:
            raise IntegrityError(f"config.json: vision_config has no {key}")
        return vc[key]

    def refuse(what: str) -> LlamactlError:
        return LlamactlError(f"this checkpoint's vision tower has {what}; llama.cpp's mtmd cannot reproduce it",
                             hint="convert the text model alone with --no-mmproj")

    n_embd, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
    image_size, patch = need("image_size"), need("patch_size")
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise refuse(f"non-square tiles {list(image_size)}")
        image_size = image_size[0]
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    image_size, patch = int(image_size), int(patch)
    if image_size % patch:
        raise IntegrityError(f"config.json: image_size {image_size} is not a multiple of patch_size {patch}")
    act = vc.get("hidden_act", "gelu")
    if act != "gelu":
        raise refuse(f"activation {act!r} (mtmd's Llama 4 graph uses GELU)")
    if int(vc.get("num_channels", 3)) != 3:
        raise refuse(f"{vc.get('num_channels')} input channels")
    rope = vc.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", vc.get("rope_theta", MTMD_ROPE_THETA)))
    if abs(theta - MTMD_ROPE_THETA) > 1e-6:
        raise refuse(f"RoPE theta {theta:g} (mtmd uses {MTMD_ROPE_THETA:g})")
    if vc.get("multi_modal_projector_bias"):
        raise refuse("projector biases")
    if vc.get("vision_feature_select_strategy", "default") != "default":
        raise refuse(f"feature selection {vc.get('vision_feature_select_strategy')!r}")
    ratio = float(vc.get("pixel_shuffle_ratio", 0.5))
    scale = round(1.0 / ratio) if ratio > 0 else 0
    if scale < 1 or abs(scale * ratio - 1.0) > 1e-6:
        raise refuse(f"pixel_shuffle_ratio {ratio}")
    side = image_size // patch
    if side % scale:
        raise refuse(f"{side} patches per side, not divisible by the pixel-shuffle factor {scale}")
    n_ff = int(need("intermediate_size"))
    if n_ff != n_embd * scale * scale:
        raise refuse(f"intermediate_size {n_ff} (the adapter needs hidden_size x {scale * scale} = "
                     f"{n_embd * scale * scale})")
    p_in, p_out = int(need("projector_input_dim")), int(need("projector_output_dim"))
    if p_in != p_out or int(vc.get("vision_output_dim", p_out)) != p_out:
        raise refuse(f"adapter widths {p_in}/{p_out}/{vc.get('vision_output_dim')} that differ")
    text_embd = int(tc.get("hidden_size") or 0)
    if text_embd <= 0:
        raise IntegrityError("config.json: text_config has no hidden_size")
    pre = _preprocessor(src_dir)
    mean = [float(x) for x in pre.get("image_mean", [0.5, 0.5, 0.5])]
    std = [float(x) for x in pre.get("image_std", [0.5, 0.5, 0.5])]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise IntegrityError("preprocessor_config.json: image_mean/image_std need 3 values (std > 0)")
    size = pre.get("size") or {}
    tile = size.get("height", image_size) if isinstance(size, dict) else size
    if int(tile) != image_size or (isinstance(size, dict) and int(size.get("width", tile)) != image_size):
        raise refuse(f"preprocessor tiles of {size} for a {image_size}-pixel encoder")
    if pre.get("do_normalize") is False or pre.get("do_rescale") is False:
        raise refuse("images that are not rescaled and normalized")
    if abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise refuse(f"rescale_factor {pre.get('rescale_factor')}")
    max_tiles = int(pre.get("max_patches", DEFAULT_MAX_TILES))
    if max_tiles < 1:
        raise IntegrityError(f"preprocessor_config.json: max_patches {max_tiles}")
    return VisionHParams(
        n_embd=n_embd, n_layer=int(need("num_hidden_layers")), n_head=n_head, n_ff=n_ff,
        image_size=image_size, patch_size=patch, eps=float(vc.get("norm_eps", 1e-5)), scale=scale,
        adapter_in=n_embd * scale * scale, adapter_out=p_out, text_embd=text_embd,
        image_mean=mean, image_std=std, max_tiles=max_tiles,
    )


@dataclass
class ProjectorPlan:
    hp: VisionHParams
    jobs: list            # list[TensorJob], in mtmd's order
    n_params: int


def plan_tensors(ckpt, hp: VisionHParams, outtype: str, *, patch_layout: str = "chw") -> ProjectorPlan:
    """Every projector tensor as a streaming job; checks that the checkpoint's vision
    tensors are exactly what the config implies. `patch_layout="hwc"` (tests only) writes
    the patch embedding's columns as (row, column, channel): the classic channel-order bug."""
    from llamactl.convert.common import source_job

    tensors = ckpt.tensors
    used: set[str] = set()
    jobs = []
    mat = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[outtype]

    def get(name: str, shape: tuple[int, ...]):
        t = tensors.get(name)
        if t is None:
            raise IntegrityError(f"tensor {name} is missing from the checkpoint",
                                 hint="download every model-*.safetensors shard again")
        if tuple(t.shape) != tuple(shape):
            raise IntegrityError(f"tensor {name} has shape {list(t.shape)}, config.json implies {list(shape)}: "
                                 "the config does not match the weights")
        used.add(name)
        return t

    def add(name: str, gguf_name: str, shape: tuple[int, ...], ggml_type: str | None = None) -> None:
        t = get(name, shape)
        jobs.append(source_job(t, gguf_name, ggml_type or ("F32" if len(shape) == 1 else mat)))

    E, P = hp.n_embd, hp.patch_size
    n_pos = (hp.image_size // P) ** 2 + 1
    v = "vision_model."
    patch_type = "F16" if outtype == "f16" else "F32"
    if patch_layout == "chw":
        add(v + "patch_embedding.linear.weight", "v.patch_embd.weight", (E, 3 * P * P), patch_type)
    elif patch_layout == "hwc":
        jobs.append(_hwc_patch_job(get(v + "patch_embedding.linear.weight", (E, 3 * P * P)), P, patch_type))
    else:  # pragma: no cover - programming error
        raise ValueError(patch_layout)
    add(v + "class_embedding", "v.class_embd", (E,), "F32")
    add(v + "positional_embedding_vlm", "v.position_embd.weight", (n_pos, E), "F32")
    add(v + "layernorm_pre.weight", "v.pre_ln.weight", (E,))
    add(v + "layernorm_pre.bias", "v.pre_ln.bias", (E,))
    for i in range(hp.n_layer):
        s, b = f"{v}model.layers.{i}.", f"v.blk.{i}."
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_out")):
            add(s + f"self_attn.{hf}.weight", b + f"{gg}.weight", (E, E))
            add(s + f"self_attn.{hf}.bias", b + f"{gg}.bias", (E,))
        add(s + "input_layernorm.weight", b + "ln1.weight", (E,))
        add(s + "input_layernorm.bias", b + "ln1.bias", (E,))
        add(s + "mlp.fc1.weight", b + "ffn_up.weight", (hp.n_ff, E))
        add(s + "mlp.fc1.bias", b + "ffn_up.bias", (hp.n_ff,))
        add(s + "mlp.fc2.weight", b + "ffn_down.weight", (E, hp.n_ff))
        add(s + "mlp.fc2.bias", b + "ffn_down.bias", (E,))
        add(s + "post_attention_layernorm.weight", b + "ln2.weight", (E,))
        add(s + "post_attention_layernorm.bias", b + "ln2.bias", (E,))
    add(v + "layernorm_post.weight", "v.post_ln.weight", (E,))
    add(v + "layernorm_post.bias", "v.post_ln.bias", (E,))
    add(v + "vision_adapter.mlp.fc1.weight", "mm.model.mlp.1.weight", (hp.adapter_out, hp.adapter_in))
    add(v + "vision_adapter.mlp.fc2.weight", "mm.model.mlp.2.weight", (hp.adapter_out, hp.adapter_out))
    add("multi_modal_projector.linear_1.weight", "mm.model.fc.weight", (hp.text_embd, hp.adapter_out))
    unknown = sorted(n for n in tensors if n.startswith(PREFIXES) and n not in used)
    if unknown:
        raise IntegrityError(f"{len(unknown)} vision tensor(s) in the checkpoint are not part of Llama 4's "
                             f"vision tower as config.json describes it (first: {unknown[0]})",
                             hint="is config.json from the same model as the weights?")
    return ProjectorPlan(hp, jobs, sum(j.n_elements for j in jobs))


def _hwc_patch_job(t, patch: int, ggml_type: str):
    """Tests only: the patch embedding with its columns reordered (row, column, channel)."""
    import numpy as np

    from llamactl.convert.common import MappedTensor, array_job, to_float32

    with MappedTensor(t) as m:
        w = to_float32(np.array(m.array), t.dtype)
    w = w.reshape(w.shape[0], 3, patch, patch).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return array_job("v.patch_embd.weight", w, ggml_type)


def default_path(text_out: Path) -> Path:
    """Where the projector goes when --mmproj is not given: mmproj-NAME.gguf beside NAME.gguf
    (the name `chat` looks for first beside a local model)."""
    text_out = Path(text_out)
    return text_out.with_name(f"mmproj-{text_out.stem}.gguf")


def convert(ckpt, out_path: Path, outtype: str, progress=None, *, name: str | None = None,
            patch_layout: str = "chw", plan: ProjectorPlan | None = None) -> dict[str, Any]:
    """Write the projector GGUF of an opened Llama 4 checkpoint to `out_path` (atomically)."""
    import gguf

    from llamactl.convert import common

    if plan is None:
        plan = plan_tensors(ckpt, vision_hparams(ckpt.config, ckpt.path), outtype, patch_layout=patch_layout)
    hp = plan.hp

    def add_metadata(writer: Any) -> None:
        writer.add_type(gguf.GGUFType.MMPROJ)
        writer.add_name(f"{name or common.model_name(ckpt.path, ckpt.config)} (vision projector)")
        writer.add_file_type(common.file_type_for(outtype))
        writer.add_string("general.converted_by", "llamactl")
        writer.add_string(K_PROJ_TYPE, PROJECTOR_TYPE)
        writer.add_bool(K_HAS_VISION, True)
        writer.add_bool(K_USE_GELU, True)
        writer.add_uint32(K_PROJ_DIM, hp.text_embd)
        writer.add_uint32(K_IMAGE_SIZE, hp.image_size)
        writer.add_uint32(K_PATCH_SIZE, hp.patch_size)
        writer.add_uint32(K_N_EMBD, hp.n_embd)
        writer.add_uint32(K_N_FF, hp.n_ff)
        writer.add_uint32(K_N_BLOCK, hp.n_layer)
        writer.add_uint32(K_N_HEAD, hp.n_head)
        writer.add_float32(K_EPS, hp.eps)
        writer.add_array(K_MEAN, hp.image_mean)
        writer.add_array(K_STD, hp.image_std)
        writer.add_uint32(K_SCALE, hp.scale)
        writer.add_uint32(K_MAX_TILES, hp.max_tiles)

    size = common.write_gguf(Path(out_path), ARCH, add_metadata, plan.jobs, progress)
    return {
        "path": str(out_path),
        "n_tensors": len(plan.jobs),
        "n_params": plan.n_params,
        "bytes": size,
        "tile_size": hp.image_size,
        "tokens_per_tile": hp.tokens_per_tile,
        "max_tiles": hp.max_tiles,
    }

