"""Session fixtures of the tiny Llama 4 kit (loaded as a pytest plugin by tests/conftest.py).

- `llama4_checkpoint_factory(variant="scout", **spec)` -> Path: a checkpoint folder built by
  tests.kit.llama4 (spec fields: vision, dtype, seed, std, num_layers, max_shard_size,
  config_style, text_overrides ...), once per spec per session. Treat it as read-only.
- `llama4_gguf_factory(variant="scout", outtype="f32", **spec)` -> Path: that checkpoint
  converted by llamactl's converter, once per (spec, outtype).
- `llama4_prompt_ids(ckpt)` -> list[int]: the parity prompt (400 tokens of varied text,
  BOS first) tokenized by the checkpoint's Hugging Face tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit.llama4 import Llama4Spec, build_llama4_checkpoint

PARITY_TEXT = (
    "They'll say the CamelCase words aren't HTTPServer names, won't they? The quick brown fox "
    "jumps over 13 lazy dogs; it's 2024-07-23 at 09:30. Café résumé naïve, 日本語 and 🦙 too.\n"
    "def forward(self, x):\n    return self.mlp(x) * 2\n"
)


@pytest.fixture(scope="session")
def llama4_kit_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama4-kit")


@pytest.fixture(scope="session")
def llama4_checkpoint_factory(llama4_kit_dir):
    built: dict[str, Path] = {}

    def make(variant: str = "scout", **spec_fields) -> Path:
        spec = Llama4Spec(variant=variant, **spec_fields)
        key = spec.key()
        if key not in built:
            folder = llama4_kit_dir / f"{variant}-{len(built)}"
            build_llama4_checkpoint(folder, spec)
            built[key] = folder
        return built[key]

    return make


@pytest.fixture(scope="session")
def llama4_gguf_factory(llama4_checkpoint_factory, llama4_kit_dir):
    built: dict[tuple, Path] = {}

    def make(variant: str = "scout", outtype: str = "f32", **spec_fields) -> Path:
        from llamactl.convert import convert_checkpoint

        ckpt = llama4_checkpoint_factory(variant, **spec_fields)
        key = (str(ckpt), outtype)
        if key not in built:
            out = llama4_kit_dir / f"{ckpt.name}-{outtype}.gguf"
            convert_checkpoint(ckpt, out, outtype=outtype)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def llama4_prompt_ids():
    cache: dict[str, list[int]] = {}

    def ids(ckpt: Path) -> list[int]:
        from transformers import AutoTokenizer

        if str(ckpt) not in cache:
            tok = AutoTokenizer.from_pretrained(ckpt)
            cache[str(ckpt)] = tok(PARITY_TEXT * 3)["input_ids"]
        return cache[str(ckpt)]

    return ids


@pytest.fixture(scope="session")
def llama4_vision_factory(llama4_checkpoint_factory, llama4_kit_dir):
    """`make(outtype="f32", patch_layout="chw", **spec)` -> (checkpoint, text GGUF, projector
    GGUF): a tiny multimodal Scout-like checkpoint (tests/kit/llama4_vision.py) converted by
    llamactl with its projector, once per variant per session."""
    built: dict[tuple, tuple[Path, Path, Path]] = {}

    def make(outtype: str = "f32", patch_layout: str = "chw", **spec_fields):
        from llamactl.convert import convert_checkpoint

        spec_fields.setdefault("vision_kit", True)
        ckpt = llama4_checkpoint_factory("scout", **spec_fields)
        key = (str(ckpt), outtype, patch_layout)
        if key not in built:
            out = llama4_kit_dir / f"{ckpt.name}-vision-{outtype}-{patch_layout}" / "model.gguf"
            out.parent.mkdir(parents=True, exist_ok=True)
            mmproj = out.with_name("mmproj-model.gguf")
            convert_checkpoint(ckpt, out, outtype=outtype, mmproj=mmproj, patch_layout=patch_layout)
            built[key] = (ckpt, out, mmproj)
        return built[key]

    return make
