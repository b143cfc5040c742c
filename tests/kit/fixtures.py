"""The tiny-model kit's session fixtures (loaded as a pytest plugin by tests/conftest.py).

- `tiny_checkpoint_factory(tied=False, rope_scaling=False, dtype="float32", **more)` -> Path:
  a Hugging Face checkpoint folder (config.json, generation_config.json, safetensors,
  tokenizer.json, tokenizer_config.json with a chat template). `more` takes any other
  field of tests.kit.checkpoint.TinySpec (seed, template_in, config_style, max_shard_size,
  sizes). Built once per variant per session; treat it as read-only (copy it to change it).
- `tiny_checkpoint`: the default variant (untied, no rope scaling, float32).
- `tiny_gguf_factory(outtype="f32", **variant)` -> Path: a checkpoint converted by
  llamactl's converter, once per (variant, outtype) per session.
- `tiny_gguf`: the default checkpoint as an F32 GGUF (what chat and bench tests use).
- `tiny_gguf_q8`: Q8_0 of it, through llamactl's quantize.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit.checkpoint import TinySpec, build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_kit_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-kit")


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tiny_kit_dir):
    built: dict[str, Path] = {}

    def make(tied: bool = False, rope_scaling: bool = False, dtype: str = "float32", **more) -> Path:
        spec = TinySpec(tied=tied, rope_scaling=rope_scaling, dtype=dtype, **more)
        key = spec.key()
        if key not in built:
            folder = tiny_kit_dir / f"ckpt-{len(built)}"
            build_tiny_checkpoint(folder, spec)
            built[key] = folder
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_factory) -> Path:
    return tiny_checkpoint_factory()


@pytest.fixture(scope="session")
def tiny_gguf_factory(tiny_checkpoint_factory, tiny_kit_dir):
    built: dict[tuple, Path] = {}

    def make(outtype: str = "f32", **variant) -> Path:
        from llamactl.convert import convert_checkpoint

        ckpt = tiny_checkpoint_factory(**variant)
        key = (str(ckpt), outtype)
        if key not in built:
            out = tiny_kit_dir / f"{ckpt.name}-{outtype}.gguf"
            convert_checkpoint(ckpt, out, outtype=outtype)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_gguf(tiny_gguf_factory) -> Path:
    return tiny_gguf_factory("f32")


@pytest.fixture(scope="session")
def tiny_gguf_q8(tiny_gguf, tiny_kit_dir) -> Path:
    from llamactl.quantize import quantize_gguf

    out = tiny_kit_dir / "tiny-q8_0.gguf"
    if not out.exists():
        quantize_gguf(tiny_gguf, out, "Q8_0")
    return out
