"""Helpers for tests that run the real llama.cpp on the kit's GGUFs and read them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_llama(path: Path, *, n_ctx: int = 512, logits_all: bool = False, f32_cache: bool = False, **kw: Any):
    """llama_cpp.Llama on a GGUF, quiet, deterministic (one thread count, fixed seed).
    f32_cache: an F32 KV cache, so that parity checks measure the weights' type only."""
    import llama_cpp

    if f32_cache:
        kw.setdefault("type_k", llama_cpp.GGML_TYPE_F32)
        kw.setdefault("type_v", llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, seed=0,
                           n_threads=2, **kw)


def all_logits(llm, ids: list[int]):
    """llama.cpp's logits of every position of `ids` (a fresh KV cache), as numpy."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def read_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata key -> python value, tensor name -> ReaderTensor) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    tensors = {t.name: t for t in reader.tensors}
    return meta, tensors
