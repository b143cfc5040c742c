"""--draft and --draft-max on chat (one-shot), bench and plan, in this process (cli_here)
on the kit's tiny models."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

CHAT = ("--temperature", "0", "-n", "24", "--ctx", "256", "-t", "1")


def test_json_usage_has_the_draft_counts_and_the_same_answer(cli_here, tiny_gguf, tiny_gguf_q8):
    plain = cli_here("chat", str(tiny_gguf), "Hello there", "--json", *CHAT)
    assert plain.returncode == 0, plain.err
    drafted = cli_here("chat", str(tiny_gguf), "Hello there", "--json", "--draft", str(tiny_gguf_q8),
                       "--draft-max", "4", *CHAT)
    assert drafted.returncode == 0, drafted.err
    a, b = json.loads(plain.out), json.loads(drafted.out)
    assert a["usage"]["draft_tokens"] == 0 and a["usage"]["draft_accepted_tokens"] == 0
    assert b["content"] == a["content"]
    assert b["usage"]["completion_tokens"] == a["usage"]["completion_tokens"]
    assert b["usage"]["draft_tokens"] > 0
    assert 0 < b["usage"]["draft_accepted_tokens"] <= b["usage"]["draft_tokens"]


def test_vocabulary_mismatch_exits_2_naming_both(cli_here, tiny_gguf, tmp_path):
    from tests.synthetic.tiny import write_tiny_gguf

    other = write_tiny_gguf(tmp_path / "other-vocab.gguf", n_layer=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=64)
    r = cli_here("chat", str(tiny_gguf), "Hello", "--draft", str(other), *CHAT)
    assert r.returncode == 2
    assert "other-vocab.gguf" in r.err and tiny_gguf.name in r.err and "vocabulary" in r.err


def test_a_draft_that_fails_to_load_is_one_line(cli_here, tiny_gguf, tiny_gguf_q8, tmp_path):
    broken = tmp_path / "broken-draft.gguf"
    broken.write_bytes(tiny_gguf_q8.read_bytes()[:300_000])
    r = cli_here("chat", str(tiny_gguf), "Hello", "--draft", str(broken), *CHAT)
    assert r.returncode not in (0, 2)
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "draft model broken-draft.gguf" in errors[0]
    assert "Traceback" not in r.err and r.out == ""


def test_draft_max_needs_a_draft(cli_here, tiny_gguf):
    r = cli_here("chat", str(tiny_gguf), "Hello", "--draft-max", "4")
    assert r.returncode == 2 and "--draft" in r.err
    r = cli_here("chat", str(tiny_gguf), "Hello", "--draft", str(tiny_gguf), "--draft-max", "0")
    assert r.returncode == 2


def test_plan_with_a_draft_shows_both(cli_here, tiny_gguf, tiny_gguf_q8):
    r = cli_here("plan", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "--vram", "8GiB", "--ram", "16GiB", "--json")
    assert r.returncode == 0, r.err
    doc = json.loads(r.out)
    assert doc["draft"]["placement"] == "gpu"          # a tiny draft fits on the GPU beside it
    assert doc["draft"]["n_ctx"] == doc["n_ctx"]        # the draft follows the target's context
    assert doc["draft"]["n_gpu_layers"] == doc["draft"]["n_layers"] + 1
    # one process, one CUDA context: its overhead is counted once, in the model's plan
    gpu = doc["draft"]["gpu"]
    assert doc["gpu"]["overhead"] > 0 and gpu["overhead"] == 0
    assert gpu["total"] == gpu["weights"] + gpu.get("output_copy", 0) + gpu["kv_cache"] + gpu["compute"]
    cpu = json.loads(cli_here("plan", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "--vram", "0",
                              "--ram", "16GiB", "--json").out)
    assert cpu["draft"]["placement"] == "cpu" and cpu["draft"]["n_gpu_layers"] == 0
    text = cli_here("plan", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "--vram", "8GiB", "--ram", "16GiB")
    assert text.returncode == 0
    assert "draft     " + tiny_gguf_q8.name in text.out and "wholly on the GPU" in text.out
    assert f"--draft {tiny_gguf_q8}" in text.out
    dry = cli_here("chat", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "--dry-run", "--json")
    assert dry.returncode == 0 and "draft" in json.loads(dry.out)


def test_bench_rows_carry_the_draft_and_its_acceptance(cli_here, tiny_gguf, tiny_gguf_q8):
    r = cli_here("bench", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "-p", "0", "-n", "16", "-r", "1",
                 "--no-warmup", "-t", "1", "-o", "json")
    assert r.returncode == 0, r.err
    row = json.loads(r.out)["results"][0]
    assert row["draft"] == str(tiny_gguf_q8) and row["draft_max"] is None
    assert row["draft_tokens"] > 0 and 0 < row["draft_acceptance"] <= 1
    md = cli_here("bench", str(tiny_gguf), "--draft", str(tiny_gguf_q8), "-p", "0", "-n", "16", "-r", "1",
                  "--no-warmup", "-t", "1", "-o", "md")
    assert "| draft" in md.out and "accepted" in md.out and tiny_gguf_q8.name in md.out


def test_a_missing_draft_goes_through_the_license_gate(cli, hubsim, small_gguf, tiny_gguf, tmp_path):
    # the draft is pulled like the model: without the license accepted it exits 3 and
    # downloads nothing, before the model loads
    repo = "bartowski/Llama-3.2-1B-Instruct-GGUF"
    q4 = small_gguf(tmp_path / "src" / "q4.gguf", tensor_bytes=8192, license="llama3.2")[0]
    hubsim.add_repo(repo, {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": q4,
                           "LICENSE.txt": b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (test copy)\n"},
                    license="llama3.2")
    r = cli("chat", str(tiny_gguf), "hello", "--draft", "llama3.2-1b", *CHAT)
    assert r.returncode == 3, r.err
    assert r.out == "" and "license" in r.err.lower()
    assert [x for x in hubsim.log if x["path"].endswith(".gguf")] == []


@pytest.mark.parametrize("verb", ["plan", "chat", "bench", "serve"])
def test_draft_auto_for_llama4_says_why_before_any_pull(cli_here, verb):
    # Scout is not on this machine: the answer comes before resolving it (no network error)
    args = [verb, "llama4-scout", "--draft", "auto"] + (["hello"] if verb == "chat" else [])
    r = cli_here(*args)
    assert r.returncode == 2, r.err
    assert "no small sibling" in r.err and r.out == ""
