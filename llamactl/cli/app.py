"""Builds the app and maps errors to one-line messages and exit codes. Nothing more.

Start-up is kept near the cost of importing Typer by building only what the command line
needs: every verb module's `register(app)` receives a `_Registrar`, which registers the
invoked verb in full and every other verb as a summary (its name and help, no options).
`llamactl --help` thus lists every verb without building any verb's options, and
`llamactl list` builds only `list`. `build_app()` with no verb builds everything (the
completions generator and tests walk that tree)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

import typer

from llamactl import __version__
from llamactl.errors import ExitCode, Interrupted, LlamactlError

HELP = "Pull, convert, quantize, chat with and benchmark Meta's Llama models on llama.cpp."

# The verb modules under llamactl/cli/, in the order `llamactl --help` lists their verbs.
VERB_MODULES = ("models", "pull", "local", "license", "convert", "quantize", "chat", "serve", "bench",
                "plan", "doctor")

ALL = "*"  # build_app(ALL): every verb in full


def _bindings_version() -> str:
    # An installed distribution's metadata folder is named NAME-VERSION.dist-info (the
    # packaging standard), so the version is found without importing importlib.metadata,
    # which would cost a fifth of `llamactl --version`. Search order as importlib's.
    import re

    folder = re.compile(r"llama_cpp_python-([^-]+)\.dist-info", re.IGNORECASE)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            found = folder.fullmatch(name)
            if found:
                return found.group(1)
    from importlib import metadata  # another layout (an .egg-info): ask importlib

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


def _root(
    # a plain bool flag (default False, not None): Typer then skips its value coercion,
    # which would import pydantic on every run
    version: bool = typer.Option(
        False, "--version", help="Show llamactl's and llama.cpp's versions.",
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


def _summary() -> None:
    """Stands in for a verb that this command line does not invoke (never called: the
    invoked verb is always registered in full)."""


class _Registrar:
    """What each verb module's `register()` receives. The verb `full` (ALL: every verb) is
    registered in full, with Ctrl-C inside it becoming exit 130; any other verb only by
    its name and help, so that the top-level help still lists it. Without an app (a group
    that this command line does not invoke) it registers nothing."""

    def __init__(self, typer_app: typer.Typer | None, full: str | None):
        self._app = typer_app
        self._full = full
        self.built: list[str] = []  # the verbs registered in full

    def _wanted(self, name: str) -> bool:
        return self._full == ALL or self._full == name

    def command(self, name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if self._app is None:
            return lambda fn: fn
        if not self._wanted(name):
            self._app.command(name, **kwargs)(_summary)
            return lambda fn: fn
        register = self._app.command(name, **kwargs)
        self.built.append(name)

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_interrupt_as_error(fn))
            return fn

        return decorate

    def group(self, name: str, *, help: str, hidden: bool = False) -> _Registrar:
        """A verb with subcommands (`llamactl license accept`): register them on the
        registrar returned. Without a subcommand the group prints its help."""
        if self._app is None:
            return _Registrar(None, None)
        sub = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)
        self._app.add_typer(sub, name=name, help=help, hidden=hidden)
        if not self._wanted(name):
            return _Registrar(None, None)
        self.built.append(name)
        return _Registrar(sub, ALL)


def build_app(verb: str | None = ALL) -> typer.Typer:
    """The app, with `verb` built in full (ALL: every verb; None or an unknown name: none,
    only the summaries that the top-level help and Click's usage errors need)."""
    import importlib

    # default_map gives the help flags of the root and of the verb the value False when
    # they are not given. Left at None, Typer coerces that None through pydantic, whose
    # import alone costs about as much as importing Typer.
    defaults: dict[str, Any] = {"help": False}
    app = typer.Typer(
        name="llamactl",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "default_map": defaults},
    )
    app.callback()(_root)
    registrar = _Registrar(app, verb)
    for name in VERB_MODULES:
        importlib.import_module(f"llamactl.cli.{name}").register(registrar)
    if verb != ALL and verb in registrar.built:  # only a real verb: `llamactl help` is none
        defaults[verb] = {"help": False}
    return app


def invoked_verb(args: list[str]) -> str | None:
    """The verb a command line names: its first word that is not an option (the root takes
    only flags, so no option value can come first)."""
    for arg in args:
        if arg == "--":
            continue
        if not arg.startswith("-"):
            return arg
    return None


def _debug() -> bool:
    return os.environ.get("LLAMACTL_DEBUG", "") not in ("", "0")


def _report(exc: LlamactlError) -> None:
    from llamactl.cli import output

    output.error(exc.message)
    if exc.hint:
        output.hint(exc.hint)


def main(argv: Optional[list[str]] = None) -> None:
    from llamactl.cli.options import flag_forms

    args = flag_forms(sys.argv[1:] if argv is None else list(argv))
    try:
        build_app(invoked_verb(args))(args=args, prog_name="llamactl")
    except SystemExit:
        raise
    except BrokenPipeError:  # stdout's reader went away: end quietly
        from llamactl.cli import output

        output.stdout_gone()
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
