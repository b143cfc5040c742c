"""`llamactl license`: Llama license families and their acceptance."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "license", "Llama licenses: list, show, accept, revoke.")
