"""`llamactl doctor`."""

from __future__ import annotations

import typer

from llamactl.cli.stub import register_stub


def register(app: typer.Typer) -> None:
    register_stub(app, "doctor", "Check this machine: versions, GPU, devices, disk, paths.")
