"""The plan against llama.cpp itself: for tiny models loaded by the real llama.cpp, the KV
cache the plan predicts is the one llama.cpp allocates (its own log line), Llama 4's
chunked-attention layers included; the weights match its model buffer; the compute
estimate is in the right range."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llamactl.load import LoadSpec
from llamactl.offload import GIB, MIB, padded_ctx, plan_for_model
from tests.conftest import REPO
from tests.synthetic.llama_probe import run_probe as probe
from tests.synthetic.tiny import write_tiny_gguf

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-plan")
    return {
        "dense": write_tiny_gguf(root / "dense.gguf", n_layer=3, n_head=4, n_head_kv=2),
        "llama4": write_tiny_gguf(root / "moe.gguf", arch="llama4", n_layer=5, n_expert=4,
                                  n_expert_used=2, n_ctx_train=65536),
    }


@pytest.mark.parametrize("which,ctx,kv,fa", [
    ("dense", 1000, "f16", False),
    ("dense", 1300, "q8_0", True),
    ("llama4", 20000, "f16", False),   # beyond the 8192 chunk: chunked layers keep full caches
    ("llama4", 3000, "q4_0", True),
])
def test_kv_cache_matches_llama_cpp(tiny_models, which, ctx, kv, fa):
    model = tiny_models[which]
    plan = plan_for_model(model, LoadSpec(ctx=ctx, kv_type=kv, flash_attn=fa), vram=0, ram=64 * GIB)
    args = ["--ctx", str(ctx), "--kv-type", kv] + (["--flash-attn"] if fa else [])
    got = probe(model, *args)
    assert got["kv_caches"], "llama.cpp reported no KV cache"
    assert {c["cells"] for c in got["kv_caches"]} == {padded_ctx(ctx)}
    assert sum(c["layers"] for c in got["kv_caches"]) == plan.n_layers
    if which == "llama4":
        assert len(got["kv_caches"]) == 2  # the chunked (SWA) and the full-attention caches
    # llama.cpp prints MiB with two decimals, once per cache
    assert abs(plan.cpu["kv_cache"] / MIB - got["kv_mib"]) <= 0.006 * len(got["kv_caches"])
    # all weights on the CPU: llama.cpp's mapped model buffer is the GGUF's tensor data
    assert abs(plan.weights_total / MIB - got["buffers"]["model"]["CPU_Mapped"]) < 0.02
    # the compute buffer is an estimate: the right order of magnitude
    reported = got["buffers"]["compute"]["CPU"] * MIB
    assert 0.5 * reported <= plan.cpu["compute"] <= 2.0 * reported


_PLACEMENT_SCRIPT = r"""
import ctypes, json, re, sys
import llama_cpp
from llama_cpp._ggml import libggml as g
lines = []
@llama_cpp.llama_log_callback
def cb(level, text, ud):
    lines.append(text.decode(errors="replace"))
llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
g.ggml_backend_dev_get.restype = ctypes.c_void_p
g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
# the CPU device as the "GPU": layers llama.cpp offloads skip the CPU-only repacking
devices = (ctypes.c_void_p * 2)(g.ggml_backend_dev_get(0), None)
params = llama_cpp.llama_model_default_params()
params.devices = ctypes.addressof(devices)
params.n_gpu_layers = int(sys.argv[2])
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params)
assert model
print(json.dumps(sorted(set(re.findall(r"repack tensor (\S+)", "".join(lines))))))
"""


def test_layer_placement_matches_llama_cpp(tiny_models, tmp_path):
    """Which layers n_gpu_layers = k offloads: llama.cpp repacks quantized weights only on
    the CPU path, so the repacked tensors name the layers it kept on the CPU."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    if "REPACK = 1" not in info:
        pytest.skip("this build does not repack weights for the CPU")
    q4 = tmp_path / "dense-q4_0.gguf"
    qp = llama_cpp.llama_model_quantize_default_params()
    qp.ftype = 2  # Q4_0
    assert llama_cpp.llama_model_quantize(str(tiny_models["dense"]).encode(), str(q4).encode(), qp) == 0
    for ngl in (0, 1, 2, 3, 4):
        proc = subprocess.run([sys.executable, "-c", _PLACEMENT_SCRIPT, str(q4), str(ngl)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        repacked = json.loads(proc.stdout.strip().splitlines()[-1])
        cpu_layers = {int(name.split(".")[1]) for name in repacked if name.startswith("blk.")}
        plan = plan_for_model(q4, LoadSpec(ctx=256, gpu_layers=ngl), vram=1 * GIB, ram=8 * GIB)
        assert cpu_layers == set(range(plan.n_layers)) - set(plan.layers_on_gpu), ngl
