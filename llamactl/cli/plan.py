"""`llamactl plan`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "plan", "Show the memory plan: what goes on the GPU and in RAM.")
