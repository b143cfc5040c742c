"""`llamactl quantize`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "quantize", "Quantize a GGUF model with llama.cpp.")
