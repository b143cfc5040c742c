"""`llamactl serve` under load and at its edges: a burst beyond slots + queue gets 503s with
Retry-After and no crash; SIGTERM lets a request in flight finish and exits 0; CORS only
when asked; models that do not fit exit 8 before binding; `llamactl --help` imports none
of the server's libraries."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

from tests.conftest import REPO, run_cli
from tests.kit.server import Server

pytestmark = pytest.mark.slow

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-load-home")
    srv = Server([str(tiny_gguf), "--parallel", "2", "--queue", "4", "--ctx", "512", "--threads", "1",
                  "--cors", ORIGIN], log=home / "stderr.log",
                 env={"LLAMACTL_HOME": str(home / "llamactl"), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"})
    yield srv
    srv.stop()


def _client(server):
    return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)


def test_a_burst_beyond_slots_and_queue_gets_503s_and_the_rest_answers(server):
    client = _client(server)
    name = client.models.list().data[0].id
    results: list = [None] * 20
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        barrier.wait()
        try:
            out = client.chat.completions.create(model=name, messages=[{"role": "user", "content": f"Story {i}"}],
                                                 max_tokens=48, temperature=0)
            results[i] = out.usage.completion_tokens
        except openai.APIStatusError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    answered = [r for r in results if isinstance(r, int)]
    assert len(refused) + len(answered) == 20
    assert refused and len(answered) >= 2 + 4 - 1     # at least the slots and most of the queue
    for exc in refused:
        assert exc.status_code == 503
        assert exc.response.headers["retry-after"].isdigit()
        assert exc.body["code"] == "server_busy"
    assert all(0 < n <= 48 for n in answered)
    body = server.wait_idle()
    assert body["models"][0]["queued"] == 0
    assert client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].message.role == "assistant"


def test_cors_headers_only_for_the_origin_asked_for(server):
    req = urllib.request.Request(server.root + "/v1/models", headers={"Origin": ORIGIN})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["access-control-allow-origin"] == ORIGIN
    req = urllib.request.Request(server.root + "/v1/models", headers={"Origin": "http://other.example"})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers.get("access-control-allow-origin") is None


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(server):
    client = _client(server)
    name = client.models.list().data[0].id
    got: dict = {}
    first = threading.Event()

    def stream() -> None:
        chunks = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Describe the Andes."}],
                                                max_tokens=300, temperature=0, stream=True)
        got["reasons"] = []
        for chunk in chunks:
            first.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                got["reasons"].append(chunk.choices[0].finish_reason)

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(30)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=15)
    t.join(15)
    assert code == 0
    assert time.monotonic() - started < 10
    assert got["reasons"] == ["length"]          # the stream in flight was answered to its end
    assert server.proc.stdout.read() == b""      # the URL was the only stdout line


def test_models_that_do_not_fit_exit_8_before_binding(tiny_gguf):
    proc = run_cli("serve", str(tiny_gguf), "--ctx", "4000000000", "--parallel", "4", "--port", "0", timeout=60)
    assert proc.returncode == 8, proc.err
    assert proc.out == ""
    assert "does not fit" in proc.err and "Traceback" not in proc.err


def test_a_public_host_without_a_key_is_warned_about(tmp_path):
    proc = run_cli("serve", str(tmp_path / "missing.gguf"), "--host", "0.0.0.0", timeout=60)
    assert "without --api-key" in proc.err
    assert proc.returncode == 4 and proc.out == ""


def test_help_imports_none_of_the_server_libraries():
    code = ("import sys\nfrom llamactl.cli.app import main\n"
            "for argv in (['--help'], ['serve', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'anyio', 'openai', 'llama_cpp') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_api_key_compare_and_loopback_rules():
    from llamactl.serve.auth import authorized
    from llamactl.serve.server import is_loopback

    assert authorized("Bearer k3y", "k3y")
    assert not authorized("Bearer k3", "k3y") and not authorized(None, "k3y") and not authorized("k3y", "k3y")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


@pytest.mark.parametrize("text,names,expected", [
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', {"get_weather"}, [("get_weather", {"city": "Paris"})]),
    ('<|python_tag|>{"name": "f", "arguments": {"x": 1}}<|eom_id|>', {"f"}, [("f", {"x": 1})]),
    ('{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"y": [1, 2]}}', {"f", "g"},
     [("f", {}), ("g", {"y": [1, 2]})]),
    ('<|python_tag|>brave_search.call(query="gold price")', {"brave_search"}, [("brave_search", {"query": "gold price"})]),
    ('[get_weather(city="Paris", days=2), get_time(zone="CET")]', {"get_weather", "get_time"},
     [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"zone": "CET"})]),
    ('<|python_start|><|python_end|>{"name": "f", "parameters": {"a": "b"}}', {"f"}, [("f", {"a": "b"})]),
    ('{"name": "unknown", "parameters": {}}', {"f"}, None),
    ("The weather is nice.", {"f"}, None),
    ("print('hi')", {"f"}, None),
])
def test_llama_tool_call_forms_are_parsed(text, names, expected):
    from llamactl.serve.tools import parse_calls

    calls = parse_calls(text, names)
    assert (None if calls is None else [(c.name, c.arguments) for c in calls]) == expected
