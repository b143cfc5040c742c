"""The ctypes path for MoE expert offload: llama.cpp places exactly the tensors the
patterns name by the override (its own log says so), the model still generates, the plan's
patterns go through unchanged, and bindings of another shape are refused loudly."""

from __future__ import annotations

import ctypes
import re

import pytest

from llamactl import overrides
from llamactl.gguf_info import read_gguf
from llamactl.load import LoadSpec
from llamactl.offload import GIB, plan_for_model
from tests.synthetic.llama_probe import run_probe as probe
from tests.synthetic.tiny import write_tiny_gguf




@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("ovr") / "moe.gguf", arch="llama4", n_layer=4,
                           n_expert=4, n_expert_used=2)


def _experts(model, layers):
    return {t.name for t in read_gguf(model).tensors
            if re.match(r"blk\.(\d+)\.ffn_(up|down|gate)_exps\.", t.name) and int(t.name.split(".")[1]) in layers}


@pytest.mark.slow
def test_named_tensors_are_overridden_to_cpu(tiny_moe):
    got = probe(tiny_moe, "--pattern", r"blk\.(0|2)\.ffn_(up|down|gate)_exps", "--tokens", "4")
    assert got["class"] == "OverrideLlama"
    assert set(got["overridden"]) == _experts(tiny_moe, {0, 2})
    assert set(got["overridden"].values()) == {"CPU"}
    assert got["completion_tokens"] >= 1  # and it still generates


@pytest.mark.slow
def test_plan_patterns_reach_llama_cpp(tiny_moe):
    plan = plan_for_model(tiny_moe, LoadSpec(ctx=256, cpu_moe=3), vram=1 * GIB, ram=8 * GIB)
    assert plan.expert_layers_on_cpu == [0, 1, 2]
    args = [a for p in plan.cpu_tensor_patterns for a in ("--pattern", p)]
    got = probe(tiny_moe, *args)
    assert set(got["overridden"]) == _experts(tiny_moe, {0, 1, 2})


@pytest.mark.slow
def test_no_patterns_sets_no_override(tiny_moe):
    got = probe(tiny_moe, "--tokens", "2")
    assert got["class"] == "EngineLlama" and got["overridden"] == {}


def test_override_array_is_null_terminated():
    array, keep = overrides.build_override_array([r"blk\.0\.", r"exps"])
    assert len(array) == 3
    assert array[0].pattern == rb"blk\.0\." and array[1].pattern == b"exps"
    assert array[0].buft == array[1].buft == overrides.cpu_buffer_type()
    assert array[2].pattern is None and not array[2].buft
    assert ctypes.sizeof(overrides.BuftOverride) == 2 * ctypes.sizeof(ctypes.c_void_p)


def test_bad_pattern_is_an_error():
    with pytest.raises(overrides.LlamactlError, match="bad tensor pattern"):
        overrides.build_override_array(["blk\\.(0"])


def test_unsupported_version_fails_loudly(monkeypatch, tiny_moe):
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "__version__", "0.4.2")
    with pytest.raises(overrides.OverrideError, match="0.4.2"):
        overrides.load_llama(tiny_moe, [r"exps"], n_ctx=64, verbose=False)


def test_changed_struct_layout_fails_loudly(monkeypatch):
    import llama_cpp

    class Moved(ctypes.Structure):
        _fields_ = [("n_gpu_layers", ctypes.c_int32), ("devices", ctypes.c_void_p),
                    ("tensor_buft_overrides", ctypes.c_void_p), ("split_mode", ctypes.c_int)]

    monkeypatch.setattr(llama_cpp, "llama_model_params", Moved)
    with pytest.raises(overrides.OverrideError, match="llama_model_params"):
        overrides.check_bindings()


def test_bindings_that_skip_model_params_fail_loudly(monkeypatch, tiny_moe):
    """If a future Llama.__init__ stops assigning self.model_params, the overrides would be
    silently dropped: load_llama must refuse instead."""
    import contextlib

    import llama_cpp

    def init_without_model_params(self, model_path, **kwargs):
        self._stack = contextlib.ExitStack()

    monkeypatch.setattr(llama_cpp.Llama, "__init__", init_without_model_params)
    monkeypatch.setattr(llama_cpp.Llama, "close", lambda self: None)
    with pytest.raises(overrides.OverrideError, match="did not take the tensor overrides"):
        overrides.load_llama(tiny_moe, [r"exps"], n_ctx=64)
