"""`llamactl bench` end to end, in a subprocess, on the tiny model (small reps)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import statistics

import pytest

SMALL = ["-p", "16", "-n", "8", "-r", "2"]


def _json(proc):
    assert proc.returncode == 0, proc.err
    return json.loads(proc.out)


@pytest.mark.slow
def test_json_carries_results_and_machine_details(cli, tiny_gguf):
    doc = _json(cli("bench", str(tiny_gguf), *SMALL, "-r", "3", "--json"))
    machine = doc["machine"]
    for key in ("cpu_model", "cpu_cores_logical", "llama_cpp_system_info", "llama_cpp_build",
                "llama_cpp_python_version", "ggml_version", "llamactl_version", "gpus"):
        assert key in machine and machine[key] is not None, key
    rows = doc["results"]
    assert [r["test"] for r in rows] == ["pp16", "tg8"]
    for r in rows:
        assert r["error"] is None
        assert r["repetitions"] == 3 and len(r["samples_tps"]) == 3
        assert r["tps_mean"] == pytest.approx(statistics.fmean(r["samples_tps"]))
        assert r["tps_sd"] == pytest.approx(statistics.stdev(r["samples_tps"]))
        assert r["tps_mean"] > 0 and r["load_seconds"] > 0 and r["ttft_seconds"] > 0
        assert r["peak_rss_bytes"] > 0
        assert r["backend"] == "CPU" and r["gpu_layers"] == 0
        assert r["model_params"] > 0 and r["model_size"] > 0
    assert rows[0]["n_prompt"] == 16 and rows[1]["n_gen"] == 8


@pytest.mark.slow
def test_sweep_produces_every_combination(cli, tiny_gguf):
    doc = _json(cli("bench", str(tiny_gguf), "-p", "8", "-n", "4", "-r", "1",
                    "-t", "1,2", "-b", "32,64", "-fa", "0,1", "-o", "json"))
    got = [(r["threads"], r["n_batch"], r["flash_attn"], r["test"]) for r in doc["results"]]
    want = list(itertools.product([1, 2], [32, 64], [False, True], ["pp8", "tg4"]))
    assert sorted(got) == sorted(want) and len(got) == len(want)
    assert all(r["error"] is None for r in doc["results"])


@pytest.mark.slow
def test_depth_and_pg_tests(cli, tiny_gguf):
    doc = _json(cli("bench", str(tiny_gguf), "-p", "8", "-n", "0", "--pg", "8,4",
                    "--test", "tg 4", "-d", "0,24", "-r", "1", "-o", "json"))
    names = [r["test"] for r in doc["results"]]
    assert names == ["pp8", "pp8+tg4", "tg4", "pp8 @ d24", "pp8+tg4 @ d24", "tg4 @ d24"]
    assert [r["n_depth"] for r in doc["results"]] == [0, 0, 0, 24, 24, 24]
    assert all(r["error"] is None for r in doc["results"]), doc["results"]


@pytest.mark.slow
def test_jsonl_csv_and_md(cli, tiny_gguf):
    lines = cli("bench", str(tiny_gguf), *SMALL, "-o", "jsonl").out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["test"] for r in rows] == ["pp16", "tg8"]
    assert all(r["machine"]["cpu_model"] for r in rows)

    proc = cli("bench", str(tiny_gguf), *SMALL, "-o", "csv")
    assert proc.returncode == 0, proc.err
    parsed = list(csv.DictReader(io.StringIO(proc.out)))
    assert [r["test"] for r in parsed] == ["pp16", "tg8"]
    assert float(parsed[0]["tps_mean"]) > 0 and parsed[0]["model_type"]

    # piped with no -o: markdown, llama-bench's layout; progress only on stderr
    proc = cli("bench", str(tiny_gguf), *SMALL, "-t", "1")
    assert proc.returncode == 0, proc.err
    md = proc.out.splitlines()
    header = [c.strip() for c in md[0].strip().strip("|").split("|")]
    assert header[0] == "model" and header[-2:] == ["test", "t/s"]
    assert len(md) == 4 and "pp16" in md[2] and "tg8" in md[3] and "±" in md[2]
    assert "pp16" in proc.err  # progress
    assert "\x1b[" not in proc.out


@pytest.mark.slow
def test_a_model_that_fails_does_not_stop_the_sweep(cli, tiny_gguf, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    missing = tmp_path / "missing.gguf"
    proc = cli("bench", str(missing), str(broken), str(tiny_gguf), *SMALL, "-r", "1", "-o", "json")
    doc = json.loads(proc.out)
    by_model = {}
    for r in doc["results"]:
        by_model.setdefault(r["model"], []).append(r)
    assert [r["exit_code"] for r in by_model[str(missing)]] == [4, 4]
    assert all(r["error"] for r in by_model[str(broken)])
    assert all(r["error"] is None and r["tps_mean"] > 0 for r in by_model[str(tiny_gguf)])
    # the run exits with the first failure's code, after printing every row
    assert proc.returncode == 4
    assert "missing.gguf" in proc.err


@pytest.mark.slow
def test_save_then_history(cli, tiny_gguf):
    first = _json(cli("bench", str(tiny_gguf), *SMALL, "--save", "--json"))
    empty_before = cli("bench", "--history", "-o", "json")
    assert len(json.loads(empty_before.out)["history"]) == 2
    cli("bench", str(tiny_gguf), "-p", "0", "-n", "4", "-r", "1", "--save", "-o", "json")
    hist = json.loads(cli("bench", "--history", "-o", "json").out)["history"]
    assert [h["test"] for h in hist] == ["pp16", "tg8", "tg4"]
    assert hist[0]["tps_mean"] == pytest.approx(first["results"][0]["tps_mean"])
    assert hist[0]["machine"]["cpu_model"] == first["machine"]["cpu_model"]
    md = cli("bench", "--history")
    assert md.returncode == 0
    assert md.out.splitlines()[0].startswith("| saved ") and len(md.out.splitlines()) == 5


def test_history_when_nothing_was_saved(cli):
    proc = cli("bench", "--history", "-o", "json")
    assert proc.returncode == 0 and json.loads(proc.out) == {"history": []}


@pytest.mark.parametrize("args,named", [
    (["--test", "xx 5"], "xx 5"),
    (["-t", "1,abc"], "abc"),
    (["-fa", "maybe"], "maybe"),
    (["-p", "16", "-n", "0", "--depth", "600", "--ctx", "512"], "600"),
    (["-o", "yaml"], "yaml"),
])
def test_bad_input_exits_2_naming_the_value(cli, args, named, tmp_path):
    model = tmp_path / "m.gguf"  # never opened: the flags are checked first
    proc = cli("bench", str(model), *args)
    assert proc.returncode == 2, proc.err
    assert named in proc.err
    assert proc.out == ""


def test_no_model_is_a_usage_error(cli):
    proc = cli("bench")
    assert proc.returncode == 2 and "model" in proc.err


@pytest.mark.slow
def test_ctrl_c_stops_the_run_with_exit_130(tiny_gguf):
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tests.conftest import REPO

    proc = subprocess.Popen(
        [sys.executable, "-m", "llamactl", "bench", str(tiny_gguf), "-p", "16", "-n", "0",
         "-r", "10000000", "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err_lines: list[bytes] = []
    started = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            if b"pp16" in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert started.wait(60), b"".join(err_lines)  # the repetitions are running
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert proc.returncode == 130, b"".join(err_lines)
    assert out == b""


@pytest.mark.slow
def test_depth_beyond_the_models_trained_context_exits_2(cli, tiny_gguf):
    from llamactl.gguf_info import read_gguf

    trained = read_gguf(tiny_gguf).context_length
    depth = str(trained + 1)
    proc = cli("bench", str(tiny_gguf), "-p", "8", "-n", "0", "--depth", depth, "-o", "json")
    assert proc.returncode == 2, proc.err
    assert depth in proc.err
    row = json.loads(proc.out)["results"][0]
    assert row["exit_code"] == 2 and row["tps_mean"] is None
