"""Builds the app and maps errors to one-line messages and exit codes. Nothing more."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

import typer

from llamactl import __version__
from llamactl.errors import ExitCode, Interrupted, LlamactlError

app = typer.Typer(
    name="llamactl",
    help="Pull, convert, quantize, chat with and benchmark Meta's Llama models on llama.cpp.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _bindings_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    return f"llamactl {__version__}\nllama-cpp-python {_bindings_version()} (llama.cpp as vendored by it)"


def _version_callback(value: bool) -> None:
    if value:
        from llamactl.cli import output

        output.data(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", help="Show llamactl's and llama.cpp's versions.",
        callback=_version_callback, is_eager=True,
    ),
) -> None:
    """Pull, convert, quantize, chat with and benchmark Meta's Llama models on llama.cpp."""
    from llamactl import paths

    paths.check_home()


def _interrupt_as_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None

    return wrapper


class _App:
    """Registers commands so that Ctrl-C inside any of them becomes exit 130."""

    def __init__(self, typer_app: typer.Typer):
        self._app = typer_app

    def command(self, *args: Any, **kwargs: Any):
        register = self._app.command(*args, **kwargs)
        return lambda fn: register(_interrupt_as_error(fn))

    def add_typer(self, *args: Any, **kwargs: Any) -> None:
        self._app.add_typer(*args, **kwargs)


def _register_all() -> None:
    from llamactl.cli import (bench, chat, convert, doctor, license, local, models, plan,
                              pull, quantize)

    wrapped = _App(app)
    for module in (models, pull, local, license, convert, quantize, chat, bench, plan, doctor):
        module.register(wrapped)


_register_all()


def _debug() -> bool:
    return os.environ.get("LLAMACTL_DEBUG", "") not in ("", "0")


def _report(exc: LlamactlError) -> None:
    from llamactl.cli import output

    output.error(exc.message)
    if exc.hint:
        output.hint(exc.hint)


def _quiet_broken_pipe() -> None:
    # stdout's reader went away (`llamactl list | head -1`): end quietly. Point stdout at
    # devnull so the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="llamactl")
    except SystemExit:
        raise
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(ExitCode.OK)
    except LlamactlError as exc:
        if _debug():
            import traceback

            traceback.print_exc()
        try:
            _report(exc)
        except BrokenPipeError:
            pass
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # an unknown error: one line, or the traceback with LLAMACTL_DEBUG=1
        if _debug():
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc}\n"
                         "hint: run again with LLAMACTL_DEBUG=1 for the traceback, and report it\n")
        sys.exit(ExitCode.ERROR)
