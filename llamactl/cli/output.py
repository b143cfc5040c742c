"""The one place that writes. Data goes to stdout; progress, hints, warnings and logs go to
stderr. When a stream is not a terminal, or NO_COLOR is set, nothing carries ANSI codes.

Commands call `data()`/`json_doc()` for their result, `info()`/`warn()`/`hint()` for
everything else, and `stderr_console()` for rich progress bars and tables meant for people.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_consoles: dict[str, Any] = {}


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def is_tty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stdout_is_tty() -> bool:
    return is_tty(sys.stdout)


def stderr_is_tty() -> bool:
    return is_tty(sys.stderr)


def stdin_is_tty() -> bool:
    return is_tty(sys.stdin)


def _console(name: str):
    stream = sys.stdout if name == "stdout" else sys.stderr
    cached = _consoles.get(name)
    if cached is not None and cached.file is stream:
        return cached
    from rich.console import Console

    tty = is_tty(stream)
    console = Console(
        file=stream,
        force_terminal=tty,
        no_color=_no_color() or not tty,
        color_system="auto" if tty and not _no_color() else None,
        highlight=False,
        soft_wrap=not tty,
        emoji=False,
    )
    _consoles[name] = console
    return console


def stdout_console():
    """A rich console on stdout: for tables that are the command's data."""
    return _console("stdout")


def stderr_console():
    """A rich console on stderr: for progress bars, tables and notes meant for people."""
    return _console("stderr")


def data(text: str = "", end: str = "\n") -> None:
    """Write plain data to stdout (no markup, no colour)."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def stream(text: str) -> None:
    """Write a piece of streamed text to stdout, flushed at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def json_doc(obj: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def table(tbl: Any) -> None:
    """Print a rich table as the command's data (stdout)."""
    stdout_console().print(tbl)


def _err(prefix: str, style: str, message: str) -> None:
    console = stderr_console()
    from rich.text import Text

    text = Text()
    if prefix:
        text.append(prefix, style=style)
    text.append(message)
    console.print(text, soft_wrap=True)


def info(message: str) -> None:
    _err("", "", message)


def note(message: str) -> None:
    """A dim line for people (statistics, notices)."""
    stderr_console().print(message, style="dim", markup=False, soft_wrap=True)


def warn(message: str) -> None:
    _err("warning: ", "bold yellow", message)


def hint(message: str) -> None:
    _err("hint: ", "cyan", message)


def error(message: str) -> None:
    _err("error: ", "bold red", message)
