"""The memory plan on header-only copies of the five real models: the outcomes the issue
expects on an 80 GiB H100 and a 24 GiB card, exact weight totals, patterns that match
exactly the expert tensors they claim, and the refusals."""

from __future__ import annotations

import re

import pytest

from llamactl.errors import InsufficientResources
from llamactl.gguf_info import read_gguf
from llamactl.load import KV_TYPES, load_spec
from llamactl.offload import GIB, kv_cache_bytes, model_shape, plan_for_model

RAM = 256 * GIB
MODELS = ["llama3.2-1b", "llama3.2-3b", "llama3.3-70b", "llama4-scout", "llama4-maverick"]


def _plan(synthetic_gguf, key, vram, ram=RAM, **kw):
    return plan_for_model(synthetic_gguf(key, tokenizer=False), load_spec(**kw), vram=vram, ram=ram)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("vram_gib", [80, 24])
def test_plans_are_sound(synthetic_gguf, key, vram_gib):
    vram = vram_gib * GIB
    plan = _plan(synthetic_gguf, key, vram)
    info = read_gguf(synthetic_gguf(key, tokenizer=False))
    # every tensor byte is placed once
    assert plan.weights_total == info.tensor_bytes
    assert plan.gpu["weights"] + plan.cpu["weights"] == info.tensor_bytes
    # what goes on the GPU fits it, with the margin
    assert plan.fits
    assert plan.gpu["total"] <= vram - plan.margin
    assert plan.cpu["total"] <= RAM
    assert 0 < plan.n_ctx <= info.context_length
    # the patterns match exactly the routed-expert tensors of the layers said to be in RAM
    matched = {t.name for t in info.tensors
               if any(re.search(p, t.name) for p in plan.cpu_tensor_patterns)}
    expected = {t.name for t in info.tensors
                if re.match(r"blk\.(\d+)\.ffn_(up|down|gate)_exps\.", t.name)
                and int(t.name.split(".")[1]) in plan.expert_layers_on_cpu}
    assert matched == expected
    assert plan.to_dict()["weights_total"] == info.tensor_bytes


def test_small_models_fit_anywhere(synthetic_gguf):
    for key in ("llama3.2-1b", "llama3.2-3b"):
        for vram in (80 * GIB, 24 * GIB, 8 * GIB):
            plan = _plan(synthetic_gguf, key, vram)
            assert plan.strategy == "full-gpu"
            assert plan.n_gpu_layers == plan.n_layers + 1 and plan.output_on_gpu
            assert plan.cpu_tensor_patterns == []


def test_scout_on_h100_is_all_gpu(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", 80 * GIB)
    assert plan.strategy == "full-gpu"
    assert plan.n_gpu_layers == 49 and not plan.expert_layers_on_cpu
    assert plan.n_ctx >= 16384  # a moderate context, not a token-starved one


def test_scout_on_24gb_keeps_most_experts_in_ram(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", 24 * GIB)
    assert plan.strategy == "experts-to-cpu"
    assert plan.n_gpu_layers == 49  # attention and shared experts of every layer stay on the GPU
    assert len(plan.expert_layers_on_cpu) > 24
    assert plan.expert_layers_on_cpu == list(range(len(plan.expert_layers_on_cpu)))


def test_maverick_on_h100_needs_experts_in_ram(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-maverick", 80 * GIB)
    assert plan.strategy == "experts-to-cpu"
    # only the odd layers have experts
    assert plan.expert_layers_on_cpu and all(i % 2 == 1 for i in plan.expert_layers_on_cpu)
    assert plan.cpu["weights"] > 150 * GIB


def test_70b_on_24gb_keeps_about_half_its_layers_on_the_gpu(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama3.3-70b", 24 * GIB)
    assert plan.strategy == "partial-layers"
    assert 30 <= plan.n_gpu_layers <= 50
    assert plan.output_on_gpu  # llama.cpp offloads the output layer first
    assert plan.layers_on_gpu == list(range(81 - plan.n_gpu_layers, 80))  # then the last layers


def test_requested_context_is_kept(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", 80 * GIB, ctx=131072, kv_cache="full")
    assert plan.n_ctx == 131072
    assert plan.strategy == "experts-to-cpu"  # the full KV cache of 128k tokens pushes experts out
    auto = _plan(synthetic_gguf, "llama4-scout", 80 * GIB, ctx=131072)
    assert auto.n_ctx == 131072 and auto.strategy == "full-gpu" and auto.kv_cache == "chunked"
    default = _plan(synthetic_gguf, "llama4-scout", 80 * GIB)
    assert default.n_ctx < 131072


def test_refusal_when_nothing_fits(synthetic_gguf):
    with pytest.raises(InsufficientResources) as exc:
        _plan(synthetic_gguf, "llama4-maverick", 24 * GIB, ram=64 * GIB)
    assert exc.value.exit_code == 8
    assert "GiB" in exc.value.message and "64.00 GiB RAM" in exc.value.message
    assert exc.value.plan.fits is False
    # a requested context is never shrunk to make room
    with pytest.raises(InsufficientResources):
        _plan(synthetic_gguf, "llama3.2-1b", 0, ram=1 * GIB, ctx=131072)


def test_cpu_only_machine(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama3.2-1b", 0, ram=16 * GIB)
    assert plan.n_gpu_layers == 0 and plan.strategy == "cpu-only"
    assert plan.gpu["total"] == 0 and plan.cpu_tensor_patterns == []


def test_manual_cpu_moe_and_gpu_layers(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", 80 * GIB, cpu_moe=3)
    assert plan.expert_layers_on_cpu == [0, 1, 2]
    assert plan.cpu_tensor_patterns == [r"blk\.(0|1|2)\.ffn_(up|down|gate)_exps"]
    plan = _plan(synthetic_gguf, "llama3.3-70b", 80 * GIB, gpu_layers=10)
    assert plan.n_gpu_layers == 10 and plan.layers_on_gpu == list(range(71, 80))
    assert plan.output_on_gpu


def test_kv_cache_types(synthetic_gguf):
    info = read_gguf(synthetic_gguf("llama3.3-70b", tokenizer=False))
    shape = model_shape(info)
    f16 = kv_cache_bytes(shape, 8192, "f16")
    assert f16 == 80 * 2 * 8192 * 8 * 128 * 2  # layers, K+V, cells, kv heads, head dim, bytes
    assert kv_cache_bytes(shape, 8192, "q8_0") == f16 * 34 // 64
    assert kv_cache_bytes(shape, 8000, "f16") == f16  # rounded up to 256 cells
    # flash attention auto: on for a quantized KV type
    assert _plan(synthetic_gguf, "llama3.3-70b", 24 * GIB, kv_type="q8_0", ctx=8192).flash_attn is True
    q8 = _plan(synthetic_gguf, "llama3.3-70b", 24 * GIB, kv_type="q8_0", flash_attn=True, ctx=8192)
    f = _plan(synthetic_gguf, "llama3.3-70b", 24 * GIB, ctx=8192)
    assert q8.n_gpu_layers >= f.n_gpu_layers
    assert set(KV_TYPES) >= {"f16", "q8_0", "q4_0"}


def test_manual_layers_are_kept_without_a_gpu(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", 0, gpu_layers=99)
    assert plan.n_gpu_layers == 49 and plan.cpu_tensor_patterns == []  # as asked, no experts moved
    assert any("no GPU found" in w for w in plan.warnings)
    plan = _plan(synthetic_gguf, "llama3.3-70b", 24 * GIB, gpu_layers=81)  # too big: warned, not refused
    assert plan.n_gpu_layers == 81 and not plan.fits
    assert any("requested placement needs" in w for w in plan.warnings)
