"""`llamactl models`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "models", "List the models llamactl knows (the catalog).")
