"""Tiny random Llama 4 multimodal checkpoints for the image tests, and their references.

`Llama4Spec(vision_kit=True)` (tests/kit/llama4.py) builds a `Llama4ForConditionalGeneration`
whose vision tower mtmd can run: tiles of 56 pixels (4x4 patches of 14; image size a
multiple of the patch size), hidden 32, 2 heads, 2 layers, intermediate 128 (= hidden x 4,
which the pixel shuffle of ratio 0.5 needs), adapter 64 -> the text model's width. Each tile
becomes (4/2)^2 = 4 image tokens. Vision weights are drawn with std 0.05 and random biases,
so that a lost bias or a wrong layout moves the embeddings far.

The tokenizer gets Llama 4's tile separators, and the chat template is Llama 4 Instruct's
own (transformers ships it), which writes `<|image|>` for an image part. The image token of
the config is `<|patch|>`, as in Meta's config (image_token_index 200092).

References, all from transformers (float32, eager): `image_features` (vision model +
projector: what llama.cpp's mtmd encode returns per tile), `logits_with_images` (the full
model over a prompt whose `<|patch|>` positions take the image features)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TILE_TOKENS = ["<|tile_x_separator|>", "<|tile_y_separator|>"]
TILE = 56
PATCH = 14


def instruct_template() -> str:
    from transformers.models.llama4.processing_llama4 import chat_template

    return chat_template


def vision_config(overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               image_size=TILE, patch_size=PATCH, vision_output_dim=64, projector_input_dim=64,
               projector_output_dim=64, initializer_range=0.05, norm_eps=1e-5, pixel_shuffle_ratio=0.5)
    cfg.update(overrides)
    return cfg


def write_preprocessor_config(out_dir: Path, vc: Any, max_patches: int = 16) -> None:
    """Llama4ImageProcessor's settings, as Meta's checkpoints publish them."""
    cfg = {"image_processor_type": "Llama4ImageProcessorFast", "processor_class": "Llama4Processor",
           "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
           "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_patches": max_patches,
           "resample": 2, "rescale_factor": 1 / 255, "resize_to_max_canvas": False,
           "size": {"height": vc.image_size, "width": vc.image_size}}
    (Path(out_dir) / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ------------------------------------------------------------------------- image files

def pattern(width: int, height: int, seed: int = 0):
    """An RGB uint8 array (height, width, 3): smooth gradients plus noise, so that tiles
    differ from each other and a transposed or shifted tile shows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / max(1, width) * 6.3 + seed)
    g = 127 + 120 * np.cos(y / max(1, height) * 4.1 + 2 * seed)
    b = 127 + 120 * np.sin((x + y) / max(1, width + height) * 9.7)
    img = np.stack([r, g, b], -1) + rng.normal(0, 18, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, width: int, height: int, seed: int = 0, fmt: str | None = None) -> Path:
    """A real PNG or JPEG file (by suffix or `fmt`) written with Pillow."""
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(pattern(width, height, seed), "RGB")
    kind = (fmt or path.suffix.lstrip(".")).upper().replace("JPG", "JPEG")
    img.save(path, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    return path


# -------------------------------------------------------------------------- references

def load_full_model(ckpt_dir: Path):
    import torch
    from transformers import Llama4ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = Llama4ForConditionalGeneration.from_pretrained(ckpt_dir, dtype=torch.float32,
                                                           attn_implementation="eager")
    model.eval()
    return model


def image_features(model, pixel_values):
    """transformers' image embeddings for tiles `pixel_values` (numpy float32 [tiles, 3, T, T],
    normalized): the vision model (get_image_features) and the projector, as numpy
    [tiles, tokens_per_tile, text_hidden]."""
    import torch

    with torch.no_grad():
        px = torch.from_numpy(pixel_values)
        feats = model.get_image_features(pixel_values=px, vision_feature_select_strategy="default",
                                         return_dict=True).last_hidden_state
        proj = model.multi_modal_projector(feats)
    return proj.float().numpy()


def logits_with_images(model, input_ids: list[int], pixel_values):
    """transformers' float32 logits over `input_ids`, whose image-token positions take the
    features of `pixel_values` (all tiles of all images, in prompt order)."""
    import torch

    # Llama4ForConditionalGeneration.forward's steps, taken one by one: transformers 5.24's
    # forward computes the logits and then fails building its output object
    # ("'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs'")
    with torch.no_grad():
        ids = torch.tensor([input_ids])
        embeds = model.get_input_embeddings()(ids)
        feats = model.get_image_features(pixel_values=torch.from_numpy(pixel_values),
                                         vision_feature_select_strategy="default", return_dict=True).last_hidden_state
        proj = model.multi_modal_projector(feats.reshape(-1, feats.shape[-1])).to(embeds.dtype)
        mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        assert int(mask[..., 0].sum()) == proj.shape[0], "image tokens and image features differ in number"
        embeds = embeds.masked_scatter(mask, proj)
        out = model.language_model(inputs_embeds=embeds, use_cache=False)
    return out.logits[0].float().numpy()


# ---------------------------------------------------- transformers' preprocessing decisions

_TILING_SCRIPT = r"""
import json, sys, types
import torch
from transformers.image_utils import SizeDict
# Llama4ImageProcessor's module imports torchvision at the top, which cannot be installed
# beside the CPU torch (FIELD-NOTES); its tiling functions are pure torch and never call it.
for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional"):
    sys.modules[name] = types.ModuleType(name)
import transformers.models.llama4.image_processing_llama4 as ip
args = json.loads(sys.argv[1])
tile, max_patches = args["tile"], args["max_patches"]
size = SizeDict(height=tile, width=tile)
possible = torch.tensor(ip.find_supported_resolutions(max_num_chunks=max_patches, patch_size=size))
out = []
for h, w in args["sizes"]:
    target = ip.get_best_fit((h, w), possible, resize_to_max_canvas=False)
    # the next lines are Llama4ImageProcessor._preprocess's, verbatim in substance
    max_up = size.height
    cap = (min(max(h, max_up), int(target[0])), min(max(w, max_up), int(target[1])))
    new = ip.get_max_res_without_distortion((h, w), cap)
    out.append([int(target[0]) // tile, int(target[1]) // tile, max(new[0], 1), max(new[1], 1)])
print(json.dumps(out))
"""


def transformers_tiling(sizes: list[tuple[int, int]], tile: int, max_patches: int = 16) -> list[tuple]:
    """For each (height, width): (rows, cols, resized height, resized width) as transformers'
    Llama4ImageProcessor decides them (its own functions, run in a subprocess with a stub
    for the torchvision module it imports but does not use for these)."""
    import subprocess
    import sys

    arg = json.dumps({"sizes": [list(s) for s in sizes], "tile": tile, "max_patches": max_patches})
    proc = subprocess.run([sys.executable, "-c", _TILING_SCRIPT, arg], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return [tuple(x) for x in json.loads(proc.stdout)]


def processor_image_string(rows: int, cols: int, tile: int, patch: int, pixel_shuffle_ratio: float) -> str:
    """Llama4Processor's own text for one image tiled rows x cols (its replace_image_token
    on pixel values of that shape), with its own patch-count formula."""
    import types

    import torch
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    fake = types.SimpleNamespace(patch_size=patch, downsample_ratio=int(round(1.0 / pixel_shuffle_ratio ** 2)))
    fake._prompt_split_image = lambda ar, n: Llama4Processor._prompt_split_image(fake, ar, n)
    n_tiles = rows * cols + (1 if rows * cols > 1 else 0)
    inputs = {"pixel_values": [torch.zeros(n_tiles, 3, tile, tile)], "aspect_ratios": [(rows, cols)]}
    return Llama4Processor.replace_image_token(fake, inputs, 0)
