"""`llamactl bench`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "bench", "Benchmark a model like llama-bench.")
