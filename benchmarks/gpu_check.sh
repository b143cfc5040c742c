#!/usr/bin/env bash
# GPU check for the memory plan and the MoE expert overrides.
#
#   benchmarks/gpu_check.sh                 build a CUDA llama-cpp-python, then run the checks
#   benchmarks/gpu_check.sh --skip-build    use $PYTHON (default .venv/bin/python) as it is
#
# What it does:
#  1. builds llama-cpp-python with CUDA into a fresh virtual environment (VENV, default
#     $TMPDIR/llamactl-venv-cuda; CUDA_ARCH, default this GPU's compute capability from nvidia-smi, builds
#     for one architecture only; LLAMA_CPP_PYTHON_SRC may name a local sdist for offline
#     machines, with PIP_FIND_LINKS for the other packages) and installs llamactl there;
#  2. writes small models itself (tests/synthetic/tiny.py: a dense Llama and a Llama 4 MoE
#     with random weights, a few hundred MiB each; SIZE=tiny for the test-suite sizes);
#  3. loads each in its own process (tests/synthetic/llama_probe.py) with full offload, and
#     the MoE also with expert overrides (all experts, then half of them, in RAM), plus a
#     baseline with nothing offloaded;
#  4. compares llamactl's plan (plan_for_model with the same settings) with what llama.cpp
#     allocates (its CUDA0/CPU model, KV and compute buffers, from its log), with what
#     nvidia-smi says the process uses, and checks that exactly the planned tensors were
#     "overridden to CPU".
# Without a GPU (no nvidia-smi, or a CPU-only build) it runs steps 2-4 on the CPU: the
# plan against llama.cpp's CPU buffers, and the override log lines.
# Results: a table on stdout and OUT/results.json (OUT default $TMPDIR/llamactl-gpu-check).
# Exit status: 0 when every exact check holds (weights, KV cache, overridden tensors), 1
# otherwise; compute buffers and CUDA overhead are estimates and only reported.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-${TMPDIR:-/tmp}/llamactl-venv-cuda}"
OUT="${OUT:-${TMPDIR:-/tmp}/llamactl-gpu-check}"
CTX="${CTX:-4096}"
SIZE="${SIZE:-small}"
SKIP_BUILD=0
PYTHON="${PYTHON:-}"

for arg in "$@"; do
    case "$arg" in
        --skip-build) SKIP_BUILD=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ "$SKIP_BUILD" = 1 ]; then
    PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
else
    if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
        echo "gpu_check: nvcc (the CUDA toolkit) is needed to build the CUDA wheel;" \
             "install it, or run with --skip-build" >&2
        exit 1
    fi
    export PATH="$PATH:/usr/local/cuda/bin"
    echo "== building llama-cpp-python with CUDA into $VENV (several minutes)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    cmake_args="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
    if [ -z "${CUDA_ARCH:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
        # build for this GPU only (e.g. 9.0 -> 90): minutes instead of a build for every arch
        CUDA_ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')"
    fi
    if [ -n "${CUDA_ARCH:-}" ]; then cmake_args="$cmake_args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH"; fi
    # CUDA first, then llamactl (which then finds llama-cpp-python installed); no wheel
    # cache: pip's cache does not key on CMAKE_ARGS.
    CMAKE_ARGS="$cmake_args" "$VENV/bin/python" -m pip install --no-cache-dir \
        "${LLAMA_CPP_PYTHON_SRC:-llama-cpp-python>=0.3.36,<0.4}"
    "$VENV/bin/python" -m pip install -q -e "$REPO"
    PYTHON="$VENV/bin/python"
fi

mkdir -p "$OUT"
cd "$REPO"
echo "== python: $PYTHON" >&2
OUT="$OUT" CTX="$CTX" SIZE="$SIZE" "$PYTHON" - <<'PY'
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())
import llama_cpp  # noqa: E402

from llamactl.gguf_info import read_gguf  # noqa: E402
from llamactl.offload import GIB, MIB, plan_for_model  # noqa: E402
from tests.synthetic.tiny import write_tiny_gguf  # noqa: E402

out = Path(os.environ["OUT"])
ctx = int(os.environ["CTX"])
size = os.environ["SIZE"]
has_smi = shutil.which("nvidia-smi") is not None
offload = bool(llama_cpp.llama_supports_gpu_offload())
gpu = has_smi and offload
print(f"llama-cpp-python {llama_cpp.__version__}, GPU offload: {offload}, nvidia-smi: {has_smi}",
      file=sys.stderr)
if not gpu:
    print("no usable GPU: running the CPU parts only (plan vs llama.cpp's CPU buffers, override "
          "log lines); GPU columns stay empty", file=sys.stderr)

free_vram = 0
if has_smi:
    line = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.split("\n")[0].strip()
    free_vram = int(float(line)) * MIB if line else 0

models_dir = out / "models"
models_dir.mkdir(parents=True, exist_ok=True)
if size == "tiny":
    dense_kw = dict(n_layer=4)
    moe_kw = dict(arch="llama4", n_layer=4, n_expert=4, n_expert_used=2)
else:
    dense_kw = dict(n_layer=8, n_embd=1024, n_head=8, n_head_kv=4, n_ff=4096)
    moe_kw = dict(arch="llama4", n_layer=8, n_embd=1024, n_head=8, n_head_kv=4, n_ff=4096,
                  n_expert=8, n_expert_used=1, n_ff_exp=1024)
models = {}
for name, kw in (("dense", dense_kw), ("moe", moe_kw)):
    path = models_dir / f"{size}-{name}.gguf"
    if not path.exists():
        print(f"writing {path.name} ...", file=sys.stderr)
        write_tiny_gguf(path, n_ctx_train=max(ctx, 4096), **kw)
    models[name] = path


def probe(model, ngl, patterns):
    args = [sys.executable, "-m", "tests.synthetic.llama_probe", str(model), "--ctx", str(ctx),
            "--ngl", str(ngl), "--tokens", "8"]
    for p in patterns:
        args += ["--pattern", p]
    if has_smi:
        args.append("--nvidia-smi")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


L = {k: read_gguf(p).block_count for k, p in models.items()}
runs = []
if gpu:
    runs += [("dense", "baseline (ngl 0)", 0, None), ("dense", "full offload", 99, None),
             ("moe", "full offload", 99, None), ("moe", "all experts in RAM", 99, L["moe"]),
             ("moe", "half the experts in RAM", 99, L["moe"] // 2)]
else:
    runs += [("dense", "CPU", 0, None), ("moe", "CPU + expert overrides", 0, L["moe"] // 2)]

rows = []
ok = True
for name, label, ngl, cpu_moe in runs:
    model = models[name]
    plan = plan_for_model(model, ctx=ctx, vram=free_vram if gpu else 0, ram=64 * GIB,
                          gpu_layers=ngl, cpu_moe=cpu_moe)
    patterns = plan.cpu_tensor_patterns
    if not gpu and cpu_moe:
        from llamactl.offload import expert_pattern
        patterns = [expert_pattern(list(range(cpu_moe)))]  # CPU build: prove the override path
    got = probe(model, ngl, patterns)
    bufs = got["buffers"]
    dev = "CUDA0"
    gpu_model = bufs.get("model", {}).get(dev, 0.0)
    gpu_kv = bufs.get("KV", {}).get(dev, 0.0)
    gpu_compute = bufs.get("compute", {}).get(dev, 0.0)
    cpu_model = sum(v for k, v in bufs.get("model", {}).items() if not k.startswith("CUDA0"))
    cpu_kv = bufs.get("KV", {}).get("CPU", 0.0)
    expected_over = {t.name for t in read_gguf(model).tensors
                     if any(re.search(p, t.name) for p in patterns)}
    row = {
        "model": name, "run": label, "ngl": ngl, "patterns": patterns,
        "plan_gpu_weights_mib": (plan.gpu["weights"] + plan.gpu["output_copy"]) / MIB if gpu else 0.0,
        "llama_gpu_model_mib": gpu_model,
        "plan_gpu_kv_mib": plan.gpu["kv_cache"] / MIB if gpu else 0.0, "llama_gpu_kv_mib": gpu_kv,
        "plan_gpu_compute_mib": plan.gpu["compute"] / MIB if gpu else 0.0,
        "llama_gpu_compute_mib": gpu_compute,
        "plan_gpu_total_mib": plan.gpu["total"] / MIB if gpu and ngl else 0.0,
        "nvidia_smi_mib": got.get("nvidia_smi_used_mib"),
        "plan_cpu_weights_mib": plan.cpu["weights"] / MIB, "llama_cpu_model_mib": cpu_model,
        "plan_cpu_kv_mib": plan.cpu["kv_cache"] / MIB, "llama_cpu_kv_mib": cpu_kv,
        "overridden": len(got["overridden"]), "expected_overridden": len(expected_over),
        "override_names_ok": set(got["overridden"]) == expected_over,
        "generated_tokens": got["completion_tokens"],
    }
    checks = [row["override_names_ok"], abs(row["plan_cpu_kv_mib"] - cpu_kv) < 0.02]
    if gpu and ngl:
        checks += [abs(row["plan_gpu_kv_mib"] - gpu_kv) < 0.02,
                   abs(row["plan_gpu_weights_mib"] - gpu_model) < 1.0]
    if not gpu:
        checks.append(abs(row["plan_cpu_weights_mib"] - cpu_model) < 0.05)
    row["exact_checks_ok"] = all(checks)
    ok = ok and row["exact_checks_ok"]
    rows.append(row)

cols = [("model", "model"), ("run", "run"), ("plan_gpu_weights_mib", "plan GPU wts"),
        ("llama_gpu_model_mib", "llama GPU wts"), ("plan_gpu_kv_mib", "plan GPU KV"),
        ("llama_gpu_kv_mib", "llama GPU KV"), ("plan_gpu_compute_mib", "plan GPU cmp*"),
        ("llama_gpu_compute_mib", "llama GPU cmp"), ("plan_gpu_total_mib", "plan GPU total*"),
        ("nvidia_smi_mib", "nvidia-smi"), ("plan_cpu_weights_mib", "plan CPU wts"),
        ("llama_cpu_model_mib", "llama CPU wts"), ("plan_cpu_kv_mib", "plan CPU KV"),
        ("llama_cpu_kv_mib", "llama CPU KV"), ("overridden", "overridden"),
        ("exact_checks_ok", "exact ok")]


def fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}"
    return "-" if v is None else str(v)


print("| " + " | ".join(h for _, h in cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    print("| " + " | ".join(fmt(r[k]) for k, _ in cols) + " |")
print("(MiB; * estimates: compute buffers, CUDA overhead of the plan)")
doc = {"gpu": gpu, "llama_cpp_python": llama_cpp.__version__, "ctx": ctx, "size": size,
       "free_vram": free_vram, "rows": rows, "ok": ok}
(out / "results.json").write_text(json.dumps(doc, indent=2))
print(f"results: {out / 'results.json'}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
