"""`quantize`: through llama.cpp's llama_model_quantize; each listed type loads and
generates, its size is in the type's bits-per-weight range; the gates (imatrix,
requantize, disk) act before any work; nothing half-written is left behind."""

from __future__ import annotations

import pytest

from tests.kit.llama_helpers import load_llama


def test_tiny_gguf_q8_loads_and_generates(tiny_gguf_q8):
    from llamactl.gguf_info import read_gguf

    info = read_gguf(tiny_gguf_q8)
    assert info.file_type == "Q8_0"
    assert {t.type_name for t in info.tensors if len(t.shape) == 2} == {"Q8_0"}
    llm = load_llama(tiny_gguf_q8)
    out = llm.create_completion("Hello", max_tokens=6, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
