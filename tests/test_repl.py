"""The REPL in a real pseudo-terminal (pexpect), on the tiny converted model."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.slow

PROMPT = ">>>"


def spawn(model, *args):
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1", COLUMNS="200", LINES="40")
    child = pexpect.spawn(sys.executable, ["-m", "llamactl", "chat", str(model), "--threads", "1", *args],
                          env=env, cwd=str(REPO), dimensions=(40, 200), encoding="utf-8", timeout=60)
    child.expect("/help for commands")
    child.expect(PROMPT)
    return child


def send(child, line):
    child.send(line + "\r")


def finish(child):
    child.sendeof()          # Ctrl-D at the prompt
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def saved(child, path: Path) -> dict:
    send(child, f"/save {path}")
    child.expect("saved")
    child.expect(PROMPT)
    return json.loads(path.read_text())


def test_chat_streams_answer_and_stats_then_ctrl_d_exits_0(tiny_gguf, tmp_path, isolated_home):
    child = spawn(tiny_gguf, "--seed", "1", "--temperature", "0", "-n", "12")
    send(child, "hello there")
    child.expect(r"12 tokens · [\d.]+ tok/s .*context \d+/\d+")
    child.expect(PROMPT)
    doc = saved(child, tmp_path / "c.json")
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["content"] == "hello there"
    assert doc["messages"][1]["content"]
    assert finish(child) == 0
    # persistent prompt history in the state folder
    assert "hello there" in (isolated_home / "state" / "chat_history").read_text()


def test_help_system_set_and_unknown_command(tiny_gguf, tmp_path):
    child = spawn(tiny_gguf, "-n", "4", "--temperature", "1.5", "--min-p", "0")
    send(child, "/help")
    for name in ("/exit", "/clear", "/system", "/set", "/save", "/load", "/stats", "/retry"):
        child.expect(name)
    child.expect(PROMPT)
    send(child, "/nonsense")
    child.expect("unknown command /nonsense")
    child.expect(PROMPT)
    send(child, "/system You are a pirate.")
    child.expect("system prompt set")
    child.expect(PROMPT)
    send(child, "/system")
    child.expect("system prompt: You are a pirate.")
    child.expect(PROMPT)
    # /set temperature 0: answers become deterministic, so /retry gives the same answer
    send(child, "/set temperature 0")
    child.expect("temperature = 0.0")
    child.expect(PROMPT)
    send(child, "/set max_tokens 16")
    child.expect("max_tokens = 16")
    child.expect(PROMPT)
    send(child, "tell me something")
    child.expect("16 tokens")
    child.expect(PROMPT)
    first = saved(child, tmp_path / "a.json")
    send(child, "/retry")
    child.expect("16 tokens")
    child.expect(PROMPT)
    second = saved(child, tmp_path / "b.json")
    assert first["system"] == "You are a pirate."
    assert first["messages"] == second["messages"]
    assert first["sampling"]["temperature"] == 0.0
    assert finish(child) == 0


def test_save_then_load_in_a_new_session_then_clear(tiny_gguf, tmp_path):
    conv = tmp_path / "conv.json"
    child = spawn(tiny_gguf, "--seed", "3", "-n", "6", "--system", "Be brief.")
    send(child, "first question")
    child.expect("tokens")
    child.expect(PROMPT)
    send(child, "second question")
    child.expect("tokens")
    child.expect(PROMPT)
    doc = saved(child, conv)
    assert finish(child) == 0
    assert [m["content"] for m in doc["messages"] if m["role"] == "user"] == ["first question", "second question"]

    child = spawn(tiny_gguf, "-n", "6")
    send(child, f"/load {conv}")
    child.expect("loaded 4 messages")
    child.expect(PROMPT)
    send(child, "/stats")
    child.expect("4 messages")
    child.expect(PROMPT)
    send(child, "/system")
    child.expect("system prompt: Be brief.")
    child.expect(PROMPT)
    send(child, "/clear")
    child.expect("conversation cleared")
    child.expect(PROMPT)
    after = saved(child, tmp_path / "after.json")
    assert after["messages"] == [] and after["system"] == "Be brief."
    assert finish(child) == 0

    # --load at start-up resumes it too
    child = spawn(tiny_gguf, "--load", str(conv))
    send(child, "/stats")
    child.expect("4 messages")
    child.expect(PROMPT)
    assert finish(child) == 0


def test_ctrl_c_stops_the_answer_and_keeps_the_session(tiny_gguf, tmp_path):
    # (greedy, this prompt makes the tiny model talk to the 3000-token limit: seconds)
    child = spawn(tiny_gguf, "--seed", "1", "--temperature", "0", "--ctx", "4096", "-n", "3000")
    send(child, "count to a thousand")
    child.expect(r"thousand[^\n]*\n")  # the line was sent (echoed with its newline)
    time.sleep(0.2)
    for _ in range(10):           # Ctrl-C (again if it came before the terminal left raw mode)
        child.sendintr()
        if child.expect(["interrupted", pexpect.TIMEOUT], timeout=0.5) == 0:
            break
    else:
        pytest.fail("Ctrl-C did not stop the answer")
    child.expect(PROMPT)
    doc = saved(child, tmp_path / "partial.json")
    assert doc["messages"][-1]["role"] == "assistant"
    assert doc["messages"][-1]["content"]          # the partial answer is kept
    # Ctrl-C at the prompt clears the line and does not end the session
    child.send("half typed words")
    child.sendintr()
    send(child, "/stats")
    child.expect("context: ")
    child.expect("finish: interrupted")
    child.expect(PROMPT)
    assert finish(child) == 0


def test_multi_line_input(tiny_gguf, tmp_path):
    child = spawn(tiny_gguf, "-n", "3")
    send(child, "first line\\")
    send(child, "second line")
    child.expect("3 tokens")
    child.expect(PROMPT)
    send(child, '"""')
    send(child, "block one")
    send(child, "block two")
    send(child, '"""')
    child.expect("3 tokens")
    child.expect(PROMPT)
    child.send("escape one\x1b\r")    # Esc then Enter: a new line, not sent
    send(child, "escape two")
    child.expect("3 tokens")
    child.expect(PROMPT)
    doc = saved(child, tmp_path / "m.json")
    users = [m["content"] for m in doc["messages"] if m["role"] == "user"]
    assert users == ["first line\nsecond line", "block one\nblock two", "escape one\nescape two"]
    send(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_message_too_long_for_the_window_is_refused_and_the_session_goes_on(tiny_gguf, tmp_path):
    child = spawn(tiny_gguf, "--ctx", "256", "-n", "3")
    send(child, "word " * 150)
    child.expect(r"is \d+ tokens; the context window is 256 tokens")
    child.expect(PROMPT)
    send(child, "short one")
    child.expect("3 tokens")
    child.expect(PROMPT)
    doc = saved(child, tmp_path / "s.json")
    assert [m["content"] for m in doc["messages"] if m["role"] == "user"] == ["short one"]
    assert finish(child) == 0


def test_with_a_draft_the_stats_line_and_stats_show_the_acceptance(tiny_gguf, tiny_gguf_q8, tmp_path):
    child = spawn(tiny_gguf, "--seed", "1", "--temperature", "0", "-n", "16", "--draft", str(tiny_gguf_q8))
    send(child, "hello there")
    child.expect(r"16 tokens · [\d.]+ tok/s .*context \d+/\d+ · draft (\d+)% accepted \((\d+)/(\d+)\)")
    percent, accepted, proposed = (int(g) for g in child.match.groups())
    assert 0 < accepted <= proposed and percent == round(100 * accepted / proposed)
    child.expect(PROMPT)
    send(child, "/stats")
    child.expect(rf"draft \S*{re.escape(tiny_gguf_q8.name)}: {accepted} of {proposed} proposed tokens accepted")
    child.expect(PROMPT)
    assert finish(child) == 0
