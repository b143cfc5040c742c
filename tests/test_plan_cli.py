"""`llamactl plan` in a subprocess: data on stdout (one JSON document with --json),
warnings on stderr, exit codes for bad sizes, missing files and plans that cannot fit."""

from __future__ import annotations

import json

from llamactl.offload import GIB


def test_plan_json_for_scout_on_h100(cli, synthetic_gguf):
    proc = cli("plan", str(synthetic_gguf("llama4-scout")), "--vram", "80GiB", "--ram", "256GiB", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["fits"] and doc["strategy"] == "full-gpu"
    assert doc["n_gpu_layers"] == 49 and doc["devices_source"] == "--vram"
    assert doc["vram"] == 80 * GIB and doc["ram"] == 256 * GIB
    assert doc["weights_total"] == 65_346_798_336
    assert "Llama 4: full-size KV cache on the chunked-attention layers" in proc.err


def test_plan_table_for_scout_on_24gb(cli, synthetic_gguf):
    proc = cli("plan", str(synthetic_gguf("llama4-scout")), "--vram", "24GiB", "--ram", "128GiB")
    assert proc.returncode == 0, proc.err
    assert "experts-to-cpu" in proc.out
    assert "ffn_(up|down|gate)_exps=CPU" in proc.out
    assert "--cpu-moe" in proc.out  # the chat command that applies it
    assert "\x1b[" not in proc.out + proc.err
    assert "warning:" not in proc.out  # warnings go to stderr


def test_plan_refuses_with_numbers(cli, synthetic_gguf):
    proc = cli("plan", str(synthetic_gguf("llama4-maverick")), "--vram", "24GiB", "--ram", "64GiB", "--json")
    assert proc.returncode == 8
    doc = json.loads(proc.out)  # the refused plan, for scripts
    assert doc["fits"] is False
    assert "does not fit" in proc.err and "64.00 GiB RAM" in proc.err
    assert "Traceback" not in proc.err


def test_plan_uses_detected_gpus(cli, synthetic_gguf):
    env = {"LLAMACTL_FAKE_GPUS": "NVIDIA GeForce RTX 4090:24564:24000", "LLAMACTL_FAKE_RAM_MIB": "131072"}
    proc = cli("plan", str(synthetic_gguf("llama3.3-70b")), "--json", env=env)
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["devices_source"] == "env" and doc["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090"
    assert doc["vram"] == 24000 * 1024 * 1024
    assert doc["strategy"] == "partial-layers"


def test_missing_and_foreign_files(cli, tmp_path):
    proc = cli("plan", str(tmp_path / "nope.gguf"))
    assert proc.returncode == 4 and "nope.gguf" in proc.err
    other = tmp_path / "notes.gguf"
    other.write_text("hello")
    proc = cli("plan", str(other))
    assert proc.returncode == 7 and proc.err.count("\n") <= 2


def test_plan_by_registered_name(cli, synthetic_gguf):
    from llamactl import registry

    path = synthetic_gguf("llama3.3-70b")
    registry.put({"name": "my70b", "model": "llama3.3-70b", "tag": "q4_k_m", "source": "local",
                  "path": str(path), "size": path.stat().st_size})
    proc = cli("plan", "my70b", "--vram", "24GiB", "--ram", "64GiB", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["model"] == str(path) and doc["strategy"] == "partial-layers"
