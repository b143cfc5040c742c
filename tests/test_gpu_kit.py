"""The GPU check's kit and its dry run (benchmarks/gpu/): what travels to the offline GPU
machine, and the check itself exercised end to end on this machine's CPU build.

- The trimming and size rules run on a small local sdist of the real layout (no network).
- With the package index reachable (CI), benchmarks/gpu/prepare.sh gathers the real kit
  once per session (the pinned sdist, ~77 MB, is downloaded by pip unless
  LLAMACTL_GPUKIT_CACHE already holds it) and benchmarks/gpu/run.sh --dry-run runs on it:
  toy widths of the four models, the installed CPU llama-cpp-python. Without the index
  those two tests are skipped, saying so."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import kit as kitmod  # noqa: E402

TOP = "llama_cpp_python-0.3.36"
V = "vendor/llama.cpp/"


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


KEEP = kitmod.REQUIRED + [
    V + "ggml/src/ggml-cuda/template-instances/fattn-vec-f16.cu", V + "ggml/src/ggml-cpu/ops.cpp",
    V + "ggml/src/ggml.c", V + "models/templates/llama3.jinja", V + "tools/mtmd/clip.cpp",
    V + "tools/CMakeLists.txt", V + "vendor/miniaudio/miniaudio.h", V + "cmake/common.cmake",
]
DROP = [
    V + "models/ggml-vocab-llama-bpe.gguf", V + "models/ggml-vocab-llama-bpe.gguf.out",
    V + "tools/ui/dist/index.html", V + "tools/server/server.cpp", V + "tools/llama-bench/llama-bench.cpp",
    V + "docs/build.md", "docs/index.md", V + "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
    V + "ggml/src/ggml-metal/ggml-metal.m", V + "ggml/src/ggml-sycl/ggml-sycl.cpp",
    V + "ggml/src/ggml-rpc/ggml-rpc.cpp", V + "ggml/src/ggml-hip/CMakeLists.txt",
    ".git/objects/pack/pack-1.pack", V + "tests/test-backend-ops.cpp", V + "tools/mtmd/test-1.jpeg",
]


def test_trimming_keeps_the_cpu_and_cuda_build_and_drops_the_rest(tmp_path):
    members = {n: b"keep" for n in KEEP}
    members.update({n: os.urandom(4096) for n in DROP})
    src = _sdist(tmp_path / f"{TOP}.tar.gz", members)
    out = tmp_path / "kit" / "src" / f"{TOP}.tar.gz"
    stats = kitmod.trim_sdist(src, out)
    with tarfile.open(out) as t:
        names = {m.name.split("/", 1)[1] for m in t.getmembers()}
    assert names == set(KEEP)
    assert stats["removed_files"] == len(DROP) and stats["removed_bytes"] == 4096 * len(DROP)
    assert stats["kept_files"] == len(KEEP)
    assert "vendor/llama.cpp/models/ggml-vocab-*" in stats["removed_by"]


def test_a_source_without_the_cuda_backend_is_refused(tmp_path):
    members = {n: b"x" for n in KEEP if "ggml-cuda" not in n}
    src = _sdist(tmp_path / f"{TOP}.tar.gz", members)
    out = tmp_path / "kit" / "src" / f"{TOP}.tar.gz"
    with pytest.raises(kitmod.KitError, match="ggml-cuda"):
        kitmod.trim_sdist(src, out)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_the_size_limit_fails_loudly_naming_the_largest_file(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.tar.gz").write_bytes(os.urandom(3 << 20))
    (tmp_path / "small.json").write_text("{}")
    assert kitmod.check_size(tmp_path, max_mib=4) >= 3 << 20
    with pytest.raises(kitmod.KitError, match=r"3\.0 MiB, over the 2 MiB limit.*src/big\.tar\.gz"):
        kitmod.check_size(tmp_path, max_mib=2)


def test_the_wheels_that_travel_are_what_the_gpu_machine_lacks():
    need = kitmod.wheels_needed()
    # llamactl's and llama-cpp-python's requirements missing from the GPU image, and theirs
    assert {"gguf", "diskcache", "platformdirs", "prompt-toolkit", "wcwidth"} <= set(need)
    assert not set(need) & kitmod.GPU_HAS
    assert "numpy" not in need and "torch" not in need and "llama-cpp-python" not in need
    import importlib.metadata

    assert need["gguf"] == importlib.metadata.version("gguf")      # pinned to what the tests use


# What llamactl/data/cuda_measured.json holds: no GPU run has measured anything yet, so the
# planner uses its built-in estimates. A real run applied by benchmarks/gpu/apply.py changes
# the file; then pin its values here.
PINNED_CUDA = {"cuda_overhead_bytes": None, "compute_buffer_factor": None}


def test_the_planners_cuda_constants_are_the_pinned_measurements():
    from llamactl import offload

    data = json.loads(offload.CUDA_MEASURED.read_text())
    assert {k: data[k] for k in PINNED_CUDA} == PINNED_CUDA
    offload._cuda_cache.clear()
    expected = (PINNED_CUDA["cuda_overhead_bytes"] or offload.CUDA_OVERHEAD,
                PINNED_CUDA["compute_buffer_factor"] or 1.0)
    assert offload.cuda_constants() == expected


def test_the_plan_uses_measured_cuda_constants(tmp_path, monkeypatch, synthetic_gguf):
    from llamactl import offload
    from llamactl.gguf_info import read_gguf

    info = read_gguf(synthetic_gguf("llama3.2-3b", tokenizer=False))
    offload._cuda_cache.clear()
    base = offload.plan(info, vram=80 * offload.GIB, ram=64 * offload.GIB)
    assert base.gpu["overhead"] == offload.CUDA_OVERHEAD
    data = tmp_path / "cuda_measured.json"
    data.write_text(json.dumps({"cuda_overhead_bytes": 700 * offload.MIB, "compute_buffer_factor": 1.5}))
    monkeypatch.setattr(offload, "CUDA_MEASURED", data)
    measured = offload.plan(info, vram=80 * offload.GIB, ram=64 * offload.GIB)
    assert measured.gpu["overhead"] == 700 * offload.MIB
    assert measured.gpu["compute"] == int(base.gpu["compute"] * 1.5)
    assert measured.gpu["total"] - base.gpu["total"] == (
        188 * offload.MIB + measured.gpu["compute"] - base.gpu["compute"])
    # null values (a run that measured one of them only) keep the built-in estimate
    data.write_text(json.dumps({"cuda_overhead_bytes": None, "compute_buffer_factor": 1.25}))
    monkeypatch.setattr(offload, "CUDA_MEASURED", tmp_path / "cuda_measured.json")
    offload._cuda_cache.clear()
    assert offload.cuda_constants() == (offload.CUDA_OVERHEAD, 1.25)
    offload._cuda_cache.clear()


def test_readmes_gpu_table_is_generated_from_the_planner():
    import apply

    text = (REPO / "README.md").read_text()
    assert apply.readme_with_table(text, apply.table()) == text, \
        "README's GPU table is stale: python benchmarks/gpu/apply.py --table"


def test_apply_refuses_a_dry_run(tmp_path):
    import apply

    (tmp_path / "cuda_measured.json").write_text(json.dumps(
        {"source": "benchmarks/gpu/run.sh --dry-run (no GPU: nothing measured)",
         "cuda_overhead_bytes": None, "compute_buffer_factor": None}))
    before = apply.DATA.read_text()
    with pytest.raises(SystemExit, match="dry-run"):
        apply.apply(tmp_path)
    assert apply.DATA.read_text() == before


def _index_reachable() -> bool:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpukit-probe-") as tmp:
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                   "--quiet", "-d", tmp, "diskcache==5.6.3"], capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
    return proc.returncode == 0


@pytest.fixture(scope="session")
def real_kit(tmp_path_factory):
    if not _index_reachable():
        pytest.skip("the package index cannot be reached: the real kit is not prepared "
                    "(the trimming and size rules are tested on a local sdist above)")
    kit = tmp_path_factory.mktemp("gpukit") / "kit"
    proc = subprocess.run(["bash", str(GPU / "prepare.sh"), str(kit)], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return kit, proc


@pytest.mark.slow
def test_prepare_writes_a_trimmed_kit_under_48_mib(real_kit):
    kit, proc = real_kit
    m = re.search(r"kit: .*?([\d.]+) MiB \(limit 48 MiB\)", proc.stdout)
    assert m, proc.stdout
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["total_bytes"] <= 48 << 20
    assert abs(float(m.group(1)) - manifest["total_bytes"] / 2**20) < 0.1
    assert manifest["sdist"]["sha256"] == kitmod.SDIST_SHA256
    with tarfile.open(kit / manifest["source"]["path"]) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert not [n for n in names if "ggml-vocab" in n or n.startswith((V + "tools/ui/", V + "docs/", ".git/"))]
    assert not [n for n in names if re.match(r"vendor/llama\.cpp/ggml/src/ggml-(vulkan|metal|sycl|opencl)/", n)]
    assert any(n.startswith(V + "ggml/src/ggml-cuda/") and n.endswith(".cu") for n in names)
    wheels = {p.name.split("-")[0].lower() for p in (kit / "wheels").glob("*.whl")}
    assert {"llamactl", "gguf", "diskcache", "platformdirs", "prompt_toolkit", "wcwidth"} <= wheels
    # the wheels are for the GPU machine's CPython 3.12 on x86-64 Linux (or pure Python)
    for p in (kit / "wheels").glob("*.whl"):
        assert p.name.endswith("-none-any.whl") or "x86_64" in p.name, p.name


@pytest.mark.slow
def test_the_dry_run_exercises_every_phase_on_the_cpu(real_kit, tmp_path):
    kit, _ = real_kit
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPUKIT_WORK=str(tmp_path / "work"))
    proc = subprocess.run(["bash", str(GPU / "run.sh"), str(kit), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["dry_run"] and doc["ok"] and "aborted" not in doc
    assert doc["kit"]["stale"] is False      # the kit's llamactl is this checkout's
    phases = [p["phase"] for p in doc["phases"]]
    for name in ("preflight", "unpack", "install", "doctor", "llama3.2-1b: plan vs llama.cpp",
                 "llama3.2-3b: bench pp512/tg128", "engine overhead (1B, all layers offloaded)",
                 "llama4-scout: planned and run for a 24 GiB card", "delete Scout",
                 "llama3.3-70b: bench pp512/tg128"):
        assert name in phases, phases
    assert all(p["ok"] for p in doc["phases"]), doc["phases"]
    # every phase printed with a UTC timestamp and the time since the start
    assert len(re.findall(r"^\[gpucheck \d\d:\d\d:\d\dZ \+\d\d:\d\d\] >> ", proc.stderr, re.M)) == len(phases)
    # the installed kit, not this checkout, was what ran
    install = next(p for p in doc["phases"] if p["phase"] == "install")
    assert install["llamactl"].startswith(str(tmp_path / "work" / "site"))
    # the trimmed source configures (when this machine has cmake)
    build = next(p for p in doc["phases"] if p["phase"].startswith("build"))
    assert build["configure"] in ("ok", "skipped: no cmake on PATH")
    for key in ("llama3.2-1b", "llama3.2-3b", "llama4-scout", "llama3.3-70b"):
        m = doc["models"][key]
        assert m["bench"]["pp512"]["tps"] > 0 and m["bench"]["tg128"]["weight_bytes_per_s"] > 0
        row = m["plan_vs_measured"][0]
        assert row["generated_tokens"] == 16
        assert abs(row["plan_cpu_weights_mib"] - row["llama_cpu_model_mib"]) < 0.05
    card = doc["models"]["llama4-scout"]["card_24gib"]
    assert card["plan_expert_layers_on_cpu"] > 0 and card["override_names_ok"] and card["overridden"] > 0
    assert {"pp", "tg"} <= set(doc["engine_overhead"])
    assert doc["cuda_measured"]["cuda_overhead_bytes"] is None   # nothing measured without a GPU
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md and md.count("| llama") >= 5
    assert json.loads((out / "doctor.json").read_text())
    with tarfile.open(out / "logs.tar.gz") as t:
        logged = t.getnames()
    assert "logs/llama4-scout-card-24gib-llama.log" in logged and "logs/doctor.log" in logged
    assert sorted(p.name for p in out.iterdir()) == [
        "cuda_measured.json", "doctor.json", "logs.tar.gz", "results.json", "results.md"]


@pytest.mark.slow
def test_at_its_deadline_the_check_stops_and_still_reports(real_kit, tmp_path):
    kit, _ = real_kit
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPUKIT_WORK=str(tmp_path / "work"), GPUKIT_DEADLINE="15")
    proc = subprocess.run(["bash", str(GPU / "run.sh"), str(kit), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["aborted"].startswith("OutOfTime") and not doc["ok"]
    assert doc["wall_seconds"] < 60
    assert any(p.get("error") == "out of time" for p in doc["phases"])
    assert "aborted: OutOfTime" in (out / "results.md").read_text()
    assert not list((tmp_path / "work" / "models").glob("*.gguf*"))
    assert not list((tmp_path / "work" / "models").glob("*.gguf"))   # models deleted after use


def test_a_gpu_runs_numbers_become_plan_errors_and_cuda_constants(synthetic_gguf):
    """The parts of the check only a GPU run reaches, fed llama.cpp's CUDA log lines (the GPU
    is the one thing mocked): buffers per device, nvidia-smi's figure, the derived constants."""
    import check
    from llamactl import offload
    from tests.synthetic.llama_probe import parse_log

    path = synthetic_gguf("llama3.2-3b", tokenizer=False)
    offload._cuda_cache.clear()
    plan = offload.plan_for_model(path, vram=139 * offload.GIB, ram=128 * offload.GIB).to_dict()
    w = (plan["gpu"]["weights"] + plan["gpu"]["output_copy"]) / check.MIB
    kv = plan["gpu"]["kv_cache"] / check.MIB
    log = (f"load_tensors:        CUDA0 model buffer size = {w:.2f} MiB\n"
           "load_tensors:   CPU_Mapped model buffer size =   751.50 MiB\n"
           f"llama_kv_cache:      CUDA0 KV buffer size = {kv:.2f} MiB\n"
           "llama_context:      CUDA0 compute buffer size =   600.00 MiB\n"
           "llama_context:  CUDA_Host compute buffer size =    40.00 MiB\n"
           "llama_context:  CUDA_Host  output buffer size =     0.49 MiB\n")
    got = dict(parse_log(log), nvidia_smi_used_mib=w + kv + 600 + 700, completion_tokens=16)
    row = check.compare(plan, got, None)
    assert abs(row["llama_gpu_model_mib"] - w) < 0.01 and abs(row["llama_gpu_kv_mib"] - kv) < 0.01
    assert row["llama_gpu_compute_mib"] == 600 and row["llama_host_compute_mib"] == 40
    assert abs(row["measured_overhead_mib"] - 700) < 0.02
    assert row["measured_source"] == "nvidia-smi (process)" and row["override_names_ok"]
    expected_err = (plan["gpu"]["total"] / check.MIB - got["nvidia_smi_used_mib"]) / got["nvidia_smi_used_mib"]
    assert abs(row["gpu_total_error"] - expected_err) < 1e-9
    doc = {"dry_run": False, "started": "2026-12-02T00:00:00Z", "phases": [{"phase": "preflight", "start_s": 0.0, "seconds": 1.0, "ok": True, "gpu": "NVIDIA H200"}],
           "models": {"llama3.2-3b": {"plan_vs_measured": [dict(row, label="plan")]}}, "checks": []}
    c = check.derive_constants(doc)
    assert abs(c["cuda_overhead_bytes"] - 700 * check.MIB) < 0.02 * check.MIB
    assert c["compute_buffer_factor"] == round(600 / row["plan_gpu_compute_mib"], 4)
    assert "| llama3.2-3b" in check.markdown(dict(doc, cuda_measured=c, ok=True))


@pytest.mark.parametrize("quant", ["Q4_K_M", "Q3_K_M", "Q2_K"])
def test_synthetic_weights_are_random_with_valid_scales(tmp_path, quant):
    """Every quantized type the GPU check writes dequantizes to finite weights of a trained
    model's order (std ~0.02, not 0 and not huge), different from tensor to tensor; norms are 1."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    import synth

    import dataclasses

    # a small vocabulary: reading 202k token strings back would cost GGUFReader seconds
    spec = dataclasses.replace(synth.spec_for("llama4-scout", tiny=True), vocab=512)
    r = synth.write_model(tmp_path / "m.gguf", spec, quant, threads=2)
    assert r["bytes"] == (tmp_path / "m.gguf").stat().st_size
    reader = GGUFReader(tmp_path / "m.gguf")
    seen: dict[str, np.ndarray] = {}
    types = set()
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        assert np.isfinite(w).all(), t.name
        if t.name.endswith("norm.weight") or t.name.startswith("rope_freqs"):
            assert (w == 1).all(), t.name
            continue
        types.add(t.tensor_type.name)
        assert 0.002 < w.std() < 0.2, (t.name, t.tensor_type.name, w.std())
        seen[t.name] = w[:4096]
    assert {"Q4_K_M": {"Q4_K", "Q6_K"}, "Q3_K_M": {"Q3_K", "Q4_K", "Q5_K"},
            "Q2_K": {"Q2_K", "Q3_K", "Q4_K"}}[quant] <= types
    a, b = seen["blk.0.attn_q.weight"], seen["blk.1.attn_q.weight"]
    assert not np.array_equal(a[:len(b)], b[:len(a)])


def test_the_real_run_puts_cudas_libraries_where_the_built_library_finds_them(tmp_path, monkeypatch):
    import check

    cuda = tmp_path / "cuda-13.0"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "lib64").mkdir()
    (cuda / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (cuda / "bin" / "nvcc").chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvcc").symlink_to(cuda / "bin" / "nvcc")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    chk = check.Check(tmp_path / "kit", tmp_path / "out", tmp_path / "work", False, None)
    rec: dict = {}
    chk._cuda_paths(rec)
    assert chk.env["LD_LIBRARY_PATH"] == f"{cuda / 'lib64'}{os.pathsep}/opt/x"
    assert rec["cuda_home"] == str(cuda) and chk.env["CUDACXX"] == str(bindir / "nvcc")


def test_without_a_gpu_the_real_run_stops_at_preflight_naming_what_is_missing(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "manifest.json").write_text(json.dumps({"total_bytes": 1}))
    env = dict(os.environ, PYTHON=sys.executable, GPUKIT_WORK=str(tmp_path / "work"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    import shutil

    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi: the preflight would pass")
    proc = subprocess.run(["bash", str(GPU / "run.sh"), str(kit), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "nvidia-smi" in doc["aborted"] and "missing on this machine" in doc["aborted"]
    assert [p["phase"] for p in doc["phases"]] == ["preflight"]
    bad = subprocess.run(["bash", str(GPU / "run.sh"), str(tmp_path / "nokit"), str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "prepare.sh" in bad.stderr


def test_a_kit_prepared_from_other_code_is_flagged_stale(tmp_path):
    import check

    kit = tmp_path / "kit"
    kit.mkdir()
    manifest = {"total_bytes": 1, "llama_cpp_python": "0.3.36", "wheels": [], "llamactl_wheel": "x.whl",
                "llamactl_source_sha256": kitmod.source_digest()}
    (kit / "manifest.json").write_text(json.dumps(manifest))
    chk = check.Check(kit, tmp_path / "out", tmp_path / "work", True, None)
    chk.preflight()
    assert chk.doc["kit"]["stale"] is False
    (kit / "manifest.json").write_text(json.dumps(dict(manifest, llamactl_source_sha256="0" * 64)))
    chk = check.Check(kit, tmp_path / "out2", tmp_path / "work2", True, None)
    chk.preflight()
    assert chk.doc["kit"]["stale"] is True
    assert "not this checkout's" in check.markdown(dict(chk.doc, cuda_measured={}))


def test_the_gpu_sampler_reports_the_peak_rise_of_used_memory(tmp_path):
    import time

    import check

    counter = tmp_path / "n"
    counter.write_text("1000")
    smi = tmp_path / "nvidia-smi"       # a stand-in: each call reports 500 MiB more, up to 3000
    smi.write_text(f"#!/bin/sh\nn=$(cat {counter}); echo \"$n\"; "
                   f"[ $n -lt 3000 ] && echo $((n + 500)) > {counter}\n")
    smi.chmod(0o755)
    s = check._GpuSampler(str(smi))
    s.start()
    end = time.monotonic() + 30
    while s.peak != 3000.0 and time.monotonic() < end:
        time.sleep(0.05)
    assert s.stop() == 2000.0                       # 3000 at the peak, 1000 before the command
