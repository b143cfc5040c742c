"""`llamactl chat`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "chat", "Chat with a model (REPL on a terminal, one-shot in a pipe).")
