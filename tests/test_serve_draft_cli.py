"""`llamactl serve --draft` as a user meets it: the real server on port 0 and the real
`openai` client; the tiny model drafted by its Q8_0 copy."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO
from tests.kit.server import Server

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

PROMPTS = ["Hello, who are you?", "Count to five.", "Name a colour."]


def _answers(server: Server) -> list:
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)

    def ask(content):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                              temperature=0, max_tokens=24)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:          # the slots decode together
        return list(pool.map(ask, PROMPTS))


def _serve(tmp_path, name, *args):
    return Server([*args, "--parallel", "3", "--ctx", "256", "--threads", "1"], log=tmp_path / f"{name}.log",
                  env={"LLAMACTL_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def tiny(tiny_gguf, tmp_path):
    path = tmp_path / "tiny.gguf"          # served as "tiny"
    path.symlink_to(tiny_gguf)
    return path


def test_drafted_answers_are_the_models_own_and_usage_counts_the_draft(tiny, tiny_gguf_q8, tmp_path):
    plain = _serve(tmp_path, "plain", str(tiny))
    try:
        expected = _answers(plain)
    finally:
        assert plain.stop() == 0
    drafted = _serve(tmp_path, "drafted", str(tiny), "--draft", str(tiny_gguf_q8))
    try:
        got = _answers(drafted)
    finally:
        assert drafted.stop() == 0
    assert [r.choices[0].message.content for r in got] == [r.choices[0].message.content for r in expected]
    assert [r.usage.completion_tokens for r in got] == [r.usage.completion_tokens for r in expected]
    assert expected[0].usage.completion_tokens_details is None        # no draft, no draft counts
    details = [r.usage.completion_tokens_details for r in got]
    accepted = sum(d.accepted_prediction_tokens for d in details if d)
    rejected = sum(d.rejected_prediction_tokens for d in details if d)
    assert accepted > rejected >= 0                                     # a Q8_0 copy agrees often
    assert f"drafted by {tiny_gguf_q8}" in drafted.log_path.read_text()


def _run_serve(*args, home):
    return subprocess.run([sys.executable, "-m", "llamactl", "serve", *args, "--port", "0"], capture_output=True,
                          text=True, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL,
                          env={**__import__("os").environ, "LLAMACTL_HOME": str(home), "HF_HUB_OFFLINE": "1"})


def test_a_draft_with_another_vocabulary_exits_2_before_binding(tiny, tmp_path):
    from tests.synthetic.tiny import write_tiny_gguf

    other = write_tiny_gguf(tmp_path / "other-vocab.gguf", n_layer=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=64)
    r = _run_serve(str(tiny), "--draft", str(other), home=tmp_path / "home")
    assert r.returncode == 2 and r.stdout == ""                        # no URL: the port was never bound
    assert "other-vocab.gguf" in r.stderr and "vocabulary" in r.stderr and "Traceback" not in r.stderr


def test_draft_auto_for_a_loose_file_and_draft_max_alone_exit_2(tiny, tmp_path):
    r = _run_serve(str(tiny), "--draft", "auto", home=tmp_path / "home")
    assert r.returncode == 2 and r.stdout == "" and "--draft auto" in r.stderr
    r = _run_serve(str(tiny), "--draft-max", "4", home=tmp_path / "home")
    assert r.returncode == 2 and r.stdout == "" and "--draft" in r.stderr
