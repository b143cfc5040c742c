"""`llamactl pull`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "pull", "Download a model from the Hugging Face Hub.")
