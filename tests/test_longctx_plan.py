"""Long-context plans on header-only copies of Scout and Maverick (Q4_K_M): the KV cache
mode (--kv-cache), flash attention chosen automatically (--flash-attn auto), --ctx max and
what a refused plan offers instead. No model is loaded (the sizes themselves are checked
against llama.cpp in tests/test_longctx_cache.py)."""

from __future__ import annotations

import json
import re

import pytest

from llamactl.errors import UsageError
from llamactl.gguf_info import read_gguf
from llamactl.load import load_spec
from llamactl.offload import GIB, DoesNotFit, kv_cache_bytes, model_shape, plan_for_model

H200, H100 = 139 * GIB, 80 * GIB
M1 = 1048576


def _plan(synthetic_gguf, key, vram, ram, **kw):
    return plan_for_model(synthetic_gguf(key, tokenizer=False), load_spec(**kw), vram=vram, ram=ram)


def test_the_chunked_cache_is_a_quarter_at_long_contexts(synthetic_gguf):
    shape = model_shape(read_gguf(synthetic_gguf("llama4-scout", tokenizer=False)))
    per_cell = 8 * 128 * 2 * 2                   # kv heads, head dim, K+V, f16 bytes
    full = kv_cache_bytes(shape, M1, "f16")
    chunked = kv_cache_bytes(shape, M1, "f16", chunked=True)
    assert full == 48 * M1 * per_cell == 192 * GIB
    assert chunked == 12 * M1 * per_cell + 36 * 8704 * per_cell   # 12 global layers, 36 windows
    assert 0.25 < chunked / full < 0.26
    # shorter than the window, both are the same
    assert kv_cache_bytes(shape, 8000, "f16", chunked=True) == kv_cache_bytes(shape, 8000, "f16")


def test_scout_at_1m_fits_one_h200_only_with_the_chunked_cache_and_flash_attention(synthetic_gguf):
    """The issue's case: Scout Q4_K_M, --vram 139GiB --ram 128GiB --ctx 1048576."""
    with pytest.raises(DoesNotFit) as refused:
        _plan(synthetic_gguf, "llama4-scout", H200, 128 * GIB, ctx=M1, kv_cache="full", flash_attn="off")
    assert refused.value.exit_code == 8
    plan = _plan(synthetic_gguf, "llama4-scout", H200, 128 * GIB, ctx=M1)   # auto, auto
    assert plan.fits and plan.strategy == "full-gpu" and plan.n_ctx == M1
    assert plan.kv_cache == "chunked" and plan.flash_attn is True
    assert plan.gpu["kv_cache"] == kv_cache_bytes(model_shape(read_gguf(synthetic_gguf(
        "llama4-scout", tokenizer=False))), M1, "f16", chunked=True)
    # auto says on stderr (the plan's warnings) what the chunked cache costs
    cost = [w for w in plan.warnings if w.startswith("--kv-cache auto: chunked")]
    assert cost and "8704 tokens" in cost[0] and "8191 tokens" in cost[0] and "/retry" in cost[0]


def test_auto_keeps_the_full_cache_when_it_fits_as_well(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama4-scout", H100, 256 * GIB, ctx=32768)
    assert plan.kv_cache == "full" and plan.strategy == "full-gpu"
    assert not any(w.startswith("--kv-cache auto") for w in plan.warnings)
    forced = _plan(synthetic_gguf, "llama4-scout", H100, 256 * GIB, ctx=32768, kv_cache="chunked")
    assert forced.kv_cache == "chunked" and forced.gpu["kv_cache"] < plan.gpu["kv_cache"]
    # models without chunked attention have one cache whatever is asked
    dense = _plan(synthetic_gguf, "llama3.3-70b", H100, 256 * GIB, ctx=8192, kv_cache="chunked")
    assert dense.kv_cache == "full" and set(dense.kv_cells) == {8192}


def test_flash_attention_auto(synthetic_gguf):
    # Scout at 1M tokens: the attention scores of one micro-batch would be 80 GiB
    assert _plan(synthetic_gguf, "llama4-scout", H200, 128 * GIB, ctx=M1).flash_attn is True
    # a 1B model at 4096 tokens: they are 256 MiB... minus what flash attention needs
    small = _plan(synthetic_gguf, "llama3.2-1b", H100, 64 * GIB, ctx=2048)
    assert small.flash_attn is False and small.requested["flash_attn"] == "auto"
    # a quantized KV type needs it: auto turns it on, off is refused
    assert _plan(synthetic_gguf, "llama3.2-1b", H100, 64 * GIB, ctx=2048, kv_type="q8_0").flash_attn is True
    with pytest.raises(UsageError, match="needs --flash-attn"):
        _plan(synthetic_gguf, "llama3.2-1b", H100, 64 * GIB, kv_type="q8_0", flash_attn="off")
    assert _plan(synthetic_gguf, "llama3.2-1b", H100, 64 * GIB, ctx=2048, flash_attn="on").flash_attn is True


@pytest.mark.parametrize("key,vram,ram", [("llama4-scout", H200, 128 * GIB), ("llama4-scout", 24 * GIB, 256 * GIB),
                                          ("llama4-maverick", H200, 128 * GIB)])
def test_ctx_max_is_the_largest_fitting_multiple_of_256(synthetic_gguf, key, vram, ram):
    plan = _plan(synthetic_gguf, key, vram, ram, ctx="max")
    assert plan.fits and plan.n_ctx % 256 == 0 and plan.requested["ctx"] == "max"
    assert plan.ctx_limit.startswith("GPU memory") and str(plan.n_ctx + 256) in plan.ctx_limit
    same = dict(gpu_layers=plan.n_gpu_layers, cpu_moe=plan.cpu_moe, kv_cache=plan.kv_cache)
    assert _plan(synthetic_gguf, key, vram, ram, ctx=plan.n_ctx, **same).fits
    over = _plan(synthetic_gguf, key, vram, ram, ctx=plan.n_ctx + 256, **same)
    assert over.gpu["total"] > vram - plan.margin   # one step more does not fit the GPU


def test_ctx_max_stops_at_the_trained_context(synthetic_gguf):
    plan = _plan(synthetic_gguf, "llama3.2-1b", H100, 256 * GIB, ctx="max")
    assert plan.n_ctx == 131072 and "trained context" in plan.ctx_limit
    assert plan.strategy == "full-gpu"
    # Maverick's advertised 1M tokens: one H200 with 256 GiB of RAM holds them (experts in RAM)
    mav = _plan(synthetic_gguf, "llama4-maverick", H200, 256 * GIB, ctx="max")
    assert mav.n_ctx == 1048576 and "trained context" in mav.ctx_limit and mav.kv_cache == "chunked"


def test_a_refused_plan_lists_what_would_fit_with_numbers(synthetic_gguf):
    with pytest.raises(DoesNotFit) as refused:
        _plan(synthetic_gguf, "llama4-scout", H200, 128 * GIB, ctx=M1, kv_cache="full", flash_attn="off")
    alts = refused.value.plan.alternatives
    hint = refused.value.hint
    assert any(a.startswith("--kv-cache chunked") for a in alts)
    assert any(a.startswith("--kv-type q8_0 --flash-attn on") for a in alts)
    assert any(a.startswith("--ctx ") for a in alts)
    assert "GiB" in hint and "--ctx " in hint
    # every alternative said to fit does fit when applied
    fitting = [a for a in alts if "not enough alone" not in a]
    assert fitting
    for alt in fitting:
        flags = dict(re.findall(r"--([a-z-]+) (\S+)", alt.split(" (")[0]))
        kw = dict(ctx=int(flags.get("ctx", M1)), kv_cache=flags.get("kv-cache", "full"),
                  flash_attn=flags.get("flash-attn", "off"), kv_type=flags.get("kv-type", "f16"))
        assert _plan(synthetic_gguf, "llama4-scout", H200, 128 * GIB, **kw).fits, alt
    # and the numbers in the message are the plan's
    ctx_alt = next(a for a in alts if a.startswith("--ctx "))
    assert "limited by GPU memory" in ctx_alt


def test_10m_tokens_fit_no_single_h200(synthetic_gguf):
    with pytest.raises(DoesNotFit) as refused:
        _plan(synthetic_gguf, "llama4-scout", H200, 256 * GIB, ctx=10485760)
    assert any(a.startswith("--ctx ") for a in refused.value.plan.alternatives)


# --- the command line ------------------------------------------------------------------


def test_plan_cli_long_context_options(cli, synthetic_gguf):
    model = str(synthetic_gguf("llama4-scout"))
    proc = cli("plan", model, "--vram", "139GiB", "--ram", "128GiB", "--ctx", "max", "--json")
    assert proc.returncode == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["requested"] == {"ctx": "max", "kv_cache": "auto", "flash_attn": "auto"}
    assert doc["kv_cache"] == "chunked" and doc["ctx_limit"].startswith("GPU memory")
    assert "--kv-cache auto: chunked" in proc.err
    # the bare --flash-attn switch still means on; --flash-attn off and --kv-cache full as asked
    proc = cli("plan", model, "--vram", "139GiB", "--ram", "128GiB", "--ctx", "32768", "--flash-attn", "--json")
    assert proc.returncode == 0, proc.err
    assert json.loads(proc.out)["requested"]["flash_attn"] == "on"
    proc = cli("plan", model, "--vram", "139GiB", "--ram", "128GiB", "--ctx", "1048576",
               "--kv-cache", "full", "--flash-attn", "off")
    assert proc.returncode == 8
    assert "does not fit; each of these would:" in proc.out and "--kv-type q8_0 --flash-attn on" in proc.out
    assert "what would fit:" in proc.err


@pytest.mark.parametrize("args,text", [(["--kv-cache", "half"], "--kv-cache takes full, chunked or auto"),
                                       (["--flash-attn=sometimes"], "--flash-attn takes on, off or auto"),
                                       (["--ctx", "lots"], "--ctx takes a number of tokens or 'max'")])
def test_bad_long_context_options_are_exit_2(cli, synthetic_gguf, args, text):
    proc = cli("plan", str(synthetic_gguf("llama4-scout")), "--vram", "80GiB", *args)
    assert proc.returncode == 2 and text in proc.err and "Traceback" not in proc.err


def test_readme_long_context_table_is_current():
    """README's table is generated (scripts/longctx_table.py); a planner change that moves a
    number makes this fail until the table is generated again."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("longctx_table", REPO / "scripts" / "longctx_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    copy = mod.readme_copy((REPO / "README.md").read_text(encoding="utf-8"))
    assert copy is not None, "README.md lost its longctx-table markers"
    assert copy == mod.generate(), "README.md's long-context table is stale: run scripts/longctx_table.py"
