"""cli/output.py: piped, stderr gets exactly what rich would write, without importing rich."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tests.conftest import REPO

MESSAGES = ["plain", "tab\there\tx", "a\tb\n\tc", "cr\rback\x08bell\x07 vt\x0b ff\x0c",
            "[bold]markup[/bold] :smile: http://x.y 12 True None", "  lead and trail  ", "",
            "multi\nline\n", "wide 日本\tx", "é ü ñ", "a" * 300, "tab at\tend\t", "line\r\nwin"]
PREFIX = {"info": "", "note": "", "warn": "warning: ", "hint": "hint: ", "error": "error: "}


def _as_rich_writes(kind: str, message: str) -> str:
    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, no_color=True, color_system=None,
                      highlight=False, soft_wrap=True, emoji=False)
    if kind == "note":
        console.print(message, style="dim", markup=False, soft_wrap=True)
    else:
        text = Text()
        if PREFIX[kind]:
            text.append(PREFIX[kind], style="bold")
        text.append(message)
        console.print(text, soft_wrap=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(PREFIX))
def test_piped_stderr_text_is_what_rich_writes(kind, monkeypatch):
    from llamactl.cli import output

    for message in MESSAGES:
        buf = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buf)
        getattr(output, kind)(message)
        assert buf.getvalue() == _as_rich_writes(kind, message), repr(message)


def test_piped_messages_and_tables_import_no_rich():
    code = ("import sys\n"
            "from llamactl.cli import output\n"
            "output.info('x'); output.warn('y'); output.hint('z'); output.error('e'); output.note('n')\n"
            "output.rows(['A', 'BB'], [['1', '2'], ['333', '4']])\n"
            "print('rich' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.stdout.splitlines() == ["A    BB", "1    2", "333  4", "False"]
    assert proc.stderr == "x\nwarning: y\nhint: z\nerror: e\nn\n"
