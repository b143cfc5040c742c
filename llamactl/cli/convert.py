"""`llamactl convert`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "convert", "Convert a safetensors checkpoint to GGUF.")
