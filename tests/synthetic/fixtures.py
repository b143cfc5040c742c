"""Session-scoped header-only GGUFs of the five real models (see writer.py): a factory
`synthetic_gguf("llama4-scout")` returns the path of the (first part of the) file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.synthetic.writer import SPECS, write_synthetic


@pytest.fixture(scope="session")
def synthetic_gguf(tmp_path_factory) -> Callable[..., Path]:
    root = tmp_path_factory.mktemp("synthetic")
    cache: dict[tuple[str, bool], Path] = {}

    def make(key: str, tokenizer: bool = True) -> Path:
        if key not in SPECS:
            raise KeyError(f"no synthetic spec {key!r}; known: {', '.join(SPECS)}")
        if (key, tokenizer) not in cache:
            folder = root / f"{key}{'' if tokenizer else '-notok'}"
            parts = write_synthetic(SPECS[key], folder / f"{key}-Q4_K_M.gguf", tokenizer=tokenizer)
            cache[(key, tokenizer)] = parts[0]
        return cache[(key, tokenizer)]

    return make
