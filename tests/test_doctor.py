"""`llamactl doctor`: reports this machine truthfully (CPU-only build here), prints the CUDA
reinstall command when an NVIDIA GPU is present without a CUDA build, warns about AMX."""

from __future__ import annotations

import json

from llamactl import devices, machine


def test_doctor_json_reports_this_machine(cli):
    import llama_cpp

    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["versions"]["llama_cpp_python"] == llama_cpp.__version__
    assert doc["llama_cpp"]["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    kinds = {d["kind"] for d in doc["llama_cpp"]["devices"]}
    assert "cpu" in kinds
    cpu = next(d for d in doc["llama_cpp"]["devices"] if d["kind"] == "cpu")
    assert cpu["total"] > 0
    assert doc["ram"]["total"] > 0 and 0 < doc["ram"]["available"] <= doc["ram"]["total"]
    assert doc["disk"]["models"]["free"] > 0
    assert doc["paths"]["models"].startswith(doc["paths"]["home"])  # LLAMACTL_HOME (tests)
    # the same machine record bench saves with its results
    from llamactl.machine import machine_info

    info = machine_info()
    assert doc["cpu"]["model"] == info["cpu_model"] and doc["llama_cpp"]["ggml_version"] == info["ggml_version"]
    text = cli("doctor").out
    assert f"CPU                {info['cpu_model']}" in text and f"ggml build         {info['ggml_version']}" in text


def test_doctor_prints_cuda_reinstall_for_gpu_without_cuda_build(cli):
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return  # a CUDA build: nothing to advise
    env = {"LLAMACTL_FAKE_GPUS": "NVIDIA H100 80GB HBM3:81559:80000"}
    proc = cli("doctor", env=env)
    assert proc.returncode == 0, proc.err
    assert "NVIDIA H100 80GB HBM3" in proc.out and "usable by this build: no" in proc.out
    assert machine.CUDA_REINSTALL in proc.err
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in proc.err and "--no-cache-dir" in proc.err
    doc = json.loads(cli("doctor", "--json", env=env).out)
    assert doc["nvidia"]["gpus"][0]["total"] == 81559 * 1024 * 1024
    assert doc["problems"][0]["command"] == machine.CUDA_REINSTALL


def test_no_reinstall_advice_without_gpu(cli):
    proc = cli("doctor", env={"LLAMACTL_FAKE_GPUS": ""})
    assert proc.returncode == 0
    assert "GGML_CUDA" not in proc.err


def test_amx_warning():
    assert machine.amx_warning({"avx2"}, "CPU : AMX_INT8 = 1") is None
    assert machine.amx_warning({"amx_tile", "amx_int8"}, "CPU : AVX2 = 1") is None
    assert "SIGILL" in machine.amx_warning({"amx_tile"}, "CPU : AVX512 = 1 | AMX_INT8 = 1 |")


def test_nvidia_smi_parsing():
    gpus = devices.parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559, 81000, 550.54.15\n"
                                    "1, NVIDIA GeForce RTX 4090, 24564, 20000, 550.54.15\n")
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    assert gpus[1].free == 20000 * 1024 * 1024 and gpus[0].driver == "550.54.15"
