"""`llamactl chat` in one-shot mode: the real CLI in a subprocess with pipes, on the tiny
converted model through the real llama.cpp."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

GREEDY = ["--seed", "1", "--temperature", "0", "--threads", "1"]


def chat(cli, model, *args, **kw):
    return cli("chat", str(model), *args, **kw)


def test_stdout_holds_exactly_the_answer(cli, tiny_gguf):
    plain = chat(cli, tiny_gguf, "Hello there", "-n", "12", *GREEDY)
    assert plain.returncode == 0, plain.err
    # llama.cpp is silent by default: nothing at all on stderr
    assert plain.err == ""
    as_json = chat(cli, tiny_gguf, "Hello there", "-n", "12", "--json", *GREEDY)
    doc = json.loads(as_json.out)
    assert plain.out == doc["content"] + "\n"
    assert plain.out.endswith("\n") and not plain.out.endswith("\n\n")
    assert "\x1b[" not in plain.out
    assert doc["content"]


def test_verbose_sends_llama_cpp_log_to_stderr_only(cli, tiny_gguf):
    quiet = chat(cli, tiny_gguf, "Hello there", "-n", "8", *GREEDY)
    loud = chat(cli, tiny_gguf, "Hello there", "-n", "8", "--verbose", *GREEDY)
    assert loud.returncode == 0, loud.err
    assert "llama_model_loader" in loud.err or "llama_context" in loud.err
    assert loud.out == quiet.out


def test_json_usage_matches_llama_cpp_tokenizer(cli, tiny_gguf, tiny_checkpoint):
    """The prompt rendered by transformers' own chat template code, tokenized by llama.cpp,
    has the number of tokens the answer reports."""
    import llama_cpp
    from transformers import AutoTokenizer

    proc = chat(cli, tiny_gguf, "Count my tokens, please.", "--system", "Be brief.", "-n", "5", "--json", *GREEDY)
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert set(doc) == {"model", "content", "finish_reason", "usage", "timings"}
    rendered = AutoTokenizer.from_pretrained(str(tiny_checkpoint)).apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count my tokens, please."}],
        tokenize=False, add_generation_prompt=True)
    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    expected = len(vocab.tokenize(rendered.encode(), add_bos=False, special=True))
    assert doc["usage"]["prompt_tokens"] == expected
    assert doc["finish_reason"] in ("length", "stop")
    if doc["finish_reason"] == "length":
        assert doc["usage"]["completion_tokens"] == 5
    assert doc["usage"]["total_tokens"] == expected + doc["usage"]["completion_tokens"]
    assert doc["timings"]["ttft_seconds"] > 0 and doc["timings"]["generation_tokens_per_second"] >= 0


def test_stdin_comes_first_then_the_arguments(cli, tiny_gguf):
    both = chat(cli, tiny_gguf, "what is this?", "-n", "16", *GREEDY, input="some piped text\n")
    joined = chat(cli, tiny_gguf, "some piped text\n\nwhat is this?", "-n", "16", *GREEDY)
    reversed_ = chat(cli, tiny_gguf, "what is this?\n\nsome piped text", "-n", "16", *GREEDY)
    stdin_only = chat(cli, tiny_gguf, "-n", "16", *GREEDY, input="some piped text\n\nwhat is this?")
    assert both.returncode == 0, both.err
    assert both.out == joined.out == stdin_only.out
    assert both.out != reversed_.out


def test_same_seed_same_bytes(cli, tiny_gguf):
    args = ("Tell me a story", "-n", "24", "--seed", "7", "--threads", "1")
    a = chat(cli, tiny_gguf, *args, "--temperature", "0")
    b = chat(cli, tiny_gguf, *args, "--temperature", "0")
    assert a.returncode == 0 and a.out == b.out and a.out.strip()
    c = chat(cli, tiny_gguf, *args, "--temperature", "1.0", "--min-p", "0", "--top-k", "0")
    d = chat(cli, tiny_gguf, *args, "--temperature", "1.0", "--min-p", "0", "--top-k", "0")
    e = chat(cli, tiny_gguf, "Tell me a story", "-n", "24", "--seed", "8", "--threads", "1",
             "--temperature", "1.0", "--min-p", "0", "--top-k", "0")
    assert c.stdout == d.stdout
    assert c.stdout != e.stdout


def test_empty_input_exits_2(cli, tiny_gguf):
    for proc in (chat(cli, tiny_gguf, input=""), chat(cli, tiny_gguf, input="  \n\n"), chat(cli, tiny_gguf, "   ")):
        assert proc.returncode == 2
        assert proc.out == ""
        assert "empty input" in proc.err


def test_closed_stdout_ends_quietly(tiny_gguf):
    """`llamactl chat M "..." | head -c 20`: no traceback, no error, exit 0. (Greedy, the
    tiny model answers this prompt up to the 3000-token limit: it is still writing when
    head has gone.)"""
    script = (f'"{sys.executable}" -m llamactl chat "{tiny_gguf}" "count to a thousand" '
              f'-n 3000 --ctx 4096 --seed 1 --temperature 0 | head -c 20; echo " rc=${{PIPESTATUS[0]}}"')
    proc = subprocess.run(["bash", "-c", script], capture_output=True, cwd=REPO, timeout=300,
                          env=dict(os.environ))
    out = proc.stdout.decode("utf-8", "replace")
    assert out.endswith(" rc=0\n"), (out, proc.stderr)
    assert len(out.encode()) <= 20 + len(" rc=0\n")
    assert proc.stderr == b""


def test_a_message_longer_than_the_window_is_an_error_with_both_numbers(cli, tiny_gguf):
    proc = chat(cli, tiny_gguf, "word " * 200, "--ctx", "256", *GREEDY)
    assert proc.returncode == 1
    assert proc.out == ""
    match = re.search(r"is (\d+) tokens; the context window is 256 tokens", proc.err)
    assert match, proc.err
    assert int(match.group(1)) > 256
    assert "Traceback" not in proc.err


def test_old_turns_are_dropped_to_fit_with_a_notice(cli, tiny_gguf, tmp_path):
    turns = []
    for i in range(8):
        turns.append({"role": "user", "content": f"question number {i} about the weather in Paris"})
        turns.append({"role": "assistant", "content": f"answer number {i}: it is sunny and warm today"})
    saved = tmp_path / "conv.json"
    saved.write_text(json.dumps({"system": "Be brief.", "messages": turns}))
    proc = chat(cli, tiny_gguf, "and tomorrow?", "--load", str(saved), "--ctx", "256", "-n", "8", "--json", *GREEDY)
    assert proc.returncode == 0, proc.err
    assert re.search(r"dropped the oldest \d+ turns?", proc.err), proc.err
    assert len(proc.err.strip().splitlines()) == 1
    doc = json.loads(proc.out)
    assert doc["usage"]["prompt_tokens"] + 8 <= 256
    # the saved conversation itself is untouched
    assert json.loads(saved.read_text())["messages"] == turns


def test_flag_combinations_are_checked_first(cli, tiny_gguf, tmp_path):
    sysfile = tmp_path / "sys.txt"
    sysfile.write_text("You are a pirate.")
    both = chat(cli, tiny_gguf, "hi", "--system", "x", "--system-file", str(sysfile))
    assert both.returncode == 2 and "not both" in both.err
    missing = chat(cli, tmp_path / "nope.gguf", "hi")
    assert missing.returncode == 4
    missing_sys = chat(cli, tiny_gguf, "hi", "--system-file", str(tmp_path / "none.txt"))
    assert missing_sys.returncode == 4


def test_system_file_is_the_system_prompt(cli, tiny_gguf, tmp_path):
    sysfile = tmp_path / "sys.txt"
    sysfile.write_text("You are a pirate.\n")
    a = chat(cli, tiny_gguf, "hi", "--system-file", str(sysfile), "-n", "10", *GREEDY)
    b = chat(cli, tiny_gguf, "hi", "--system", "You are a pirate.", "-n", "10", *GREEDY)
    c = chat(cli, tiny_gguf, "hi", "-n", "10", *GREEDY)
    assert a.returncode == 0, a.err
    assert a.out == b.out != c.out


def test_dry_run_prints_the_plan_and_loads_nothing(cli, tiny_gguf):
    proc = chat(cli, tiny_gguf, "--dry-run", "--json", "--ctx", "1024")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["n_ctx"] == 1024 and "n_gpu_layers" in doc


def test_missing_model_without_license_exits_3_and_downloads_nothing(cli, hubsim, small_gguf, tmp_path):
    repo = "bartowski/Llama-3.2-1B-Instruct-GGUF"
    q4 = small_gguf(tmp_path / "src" / "q4.gguf", tensor_bytes=8192, license="llama3.2")[0]
    hubsim.add_repo(repo, {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": q4,
                           "LICENSE.txt": b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (test copy)\n"},
                    license="llama3.2")
    proc = cli("chat", "llama3.2-1b", "hello")
    assert proc.returncode == 3, proc.err
    assert proc.out == ""
    assert [r for r in hubsim.log if r["path"].endswith(".gguf")] == []
    hub_cache = tmp_path / "hf-home"
    assert not any(p.suffix == ".gguf" or p.is_symlink() for p in hub_cache.rglob("*")) if hub_cache.exists() else True


def test_cpu_moe_keeps_experts_in_cpu_memory(cli, tmp_path):
    """--cpu-moe N reaches llama.cpp as tensor overrides (its log, with --verbose, says so)."""
    from tests.synthetic.tiny import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "tiny-llama4.gguf", arch="llama4", n_layer=4, n_embd=128,
                            n_head=2, n_head_kv=1, n_ff=256, n_ff_exp=128, n_expert=4)
    proc = chat(cli, model, "hi", "--cpu-moe", "2", "--gpu-layers", "99", "--ctx", "256", "-n", "2", "--verbose")
    assert proc.returncode == 0, proc.err
    overridden = re.findall(r"tensor (blk\.\d+\.ffn_\w+_exps)\.weight .*buffer type overridden to CPU", proc.err)
    assert sorted(overridden) == sorted(f"blk.{i}.ffn_{k}_exps" for i in (0, 1) for k in ("gate", "up", "down"))


def test_ctrl_c_in_one_shot_exits_130(tiny_gguf):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "chat", str(tiny_gguf), "count to a thousand",
                             "-n", "3000", "--ctx", "4096", "--seed", "1", "--temperature", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO)
    first = proc.stdout.read(4)           # the answer is streaming
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first and proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert (first + out).endswith(b"\n")
