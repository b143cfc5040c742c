"""The one place that writes. Data goes to stdout; progress, hints, warnings and logs go to
stderr. When a stream is not a terminal, or NO_COLOR is set, nothing carries ANSI codes.

Commands call `data()`/`json_doc()`/`rows()` for their result, `info()`/`warn()`/`hint()`
for everything else, and `stderr_console()` for rich progress bars and tables meant for
people. Rich is imported only for a terminal: piped, the same text is written directly
(rich would add nothing but costs a third of the start-up).
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


def stdout_gone() -> None:
    """stdout's reader went away (`llamactl list | head -1`): point stdout at devnull, so
    that nothing written later (the interpreter's final flush included) raises again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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


def rows(headers: list[str], body: list[list[str]]) -> None:
    """A table as data on stdout: a rich table on a terminal, plain aligned columns (never
    truncated) when piped."""
    if stdout_is_tty():
        from rich.table import Table

        tbl = Table(box=None, pad_edge=False)
        for col in headers:
            tbl.add_column(col)
        for row in body:
            tbl.add_row(*row)
        table(tbl)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    data("\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                   for row in [headers, *body]))  # one write: a closed pipe ends it cleanly


# What rich does to text on a stream that is not a terminal: drop the control characters
# that move the cursor (BEL, BS, VT, FF, CR) and expand tabs.
_RICH_DROPS = {c: None for c in (0x07, 0x08, 0x0B, 0x0C, 0x0D)}


def _expand_tabs(line: str) -> str:
    if "\t" not in line or line.isascii():
        return line.expandtabs(8)
    from rich.cells import cell_len  # tab stops count terminal cells (wide characters: 2)

    out, width = [], 0
    for i, piece in enumerate(line.split("\t")):
        if i:
            pad = 8 - width % 8
            out.append(" " * pad)
            width += pad
        out.append(piece)
        width += cell_len(piece)
    return "".join(out)


def _plain_err(line: str) -> None:
    text = "\n".join(_expand_tabs(part) for part in line.translate(_RICH_DROPS).split("\n"))
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _err(prefix: str, style: str, message: str) -> None:
    if not stderr_is_tty():
        _plain_err(prefix + message)
        return
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
    if not stderr_is_tty():
        _plain_err(message)
        return
    stderr_console().print(message, style="dim", markup=False, soft_wrap=True)


def warn(message: str) -> None:
    _err("warning: ", "bold yellow", message)


def hint(message: str) -> None:
    _err("hint: ", "cyan", message)


def error(message: str) -> None:
    _err("error: ", "bold red", message)


def draft_text(stats: Any) -> str:
    """The acceptance of a draft model, as the stats line and the verbose note show it."""
    return (f"draft {100 * stats.draft_accepted_tokens / stats.draft_tokens:.0f}% accepted "
            f"({stats.draft_accepted_tokens}/{stats.draft_tokens})")
