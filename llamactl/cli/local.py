"""`llamactl list`, `show`, `rm`: the models on this machine."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "list", "List the models on this machine.")
    register_stub(app, "show", "Show a model's details, read from its GGUF header.")
    register_stub(app, "rm", "Remove a model from this machine.")
