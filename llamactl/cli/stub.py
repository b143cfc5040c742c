"""Registers a verb that is not built yet: it says so in one line and exits 1."""

from __future__ import annotations

import typer

from llamactl.errors import NotImplementedYet


def register_stub(app: typer.Typer, name: str, help_text: str) -> None:
    @app.command(
        name,
        help=f"{help_text} (not built yet)",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _stub(ctx: typer.Context) -> None:
        raise NotImplementedYet(f"`llamactl {name}` is not built yet")
