"""Tensor buffer-type overrides (llama.cpp's `-ot PATTERN=CPU`) through llama-cpp-python's
ctypes layer: the one place that reaches under the high-level API.

llama-cpp-python 0.3.x declares `llama_model_params.tensor_buft_overrides` as an unused
`c_void_p`; llama.cpp reads it as a NULL-terminated array of
`struct llama_model_tensor_buft_override { const char *pattern; ggml_backend_buffer_type_t
buft; }`. `Llama.__init__` builds its model parameters itself (`self.model_params =
llama_model_default_params()`, then fills fields and loads the model), so a small
subclass turns `model_params` into a property whose setter points the fresh struct at
our array before the model is loaded. The array, the pattern strings and the subclass
instance live together: the overrides stay valid as long as the model.

The layout is checked against what this was written for (llama-cpp-python >=0.3.36,<0.4;
field order and offsets of llama_model_params); anything else raises instead of passing
a pointer llama.cpp would misread."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from llamactl.engine import bindings
from llamactl.errors import LlamactlError

# the first fields of llama_model_params, in order, as llama.h (vendored in 0.3.36) has them
EXPECTED_HEAD = ("devices", "tensor_buft_overrides", "n_gpu_layers", "split_mode")


class BuftOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override"""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class OverrideError(LlamactlError):
    """The bindings are not what this module was written for."""


def check_bindings() -> None:
    """Raise OverrideError unless llama-cpp-python's llama_model_params is laid out as
    expected (version range, field order, pointer fields at the expected offsets)."""
    import llama_cpp

    version = getattr(llama_cpp, "__version__", "unknown")
    try:
        bindings.check_version("MoE expert offload")
    except bindings.BindingsError as exc:
        raise OverrideError(exc.message, hint=exc.hint) from None
    params = llama_cpp.llama_model_params
    names = tuple(f[0] for f in params._fields_[: len(EXPECTED_HEAD)])
    if names != EXPECTED_HEAD:
        raise OverrideError(f"llama-cpp-python {version}: llama_model_params starts with {names}, "
                            f"expected {EXPECTED_HEAD}; the expert-offload path cannot be used safely")
    field = params.tensor_buft_overrides
    ptr = ctypes.sizeof(ctypes.c_void_p)
    ftype = dict(params._fields_)["tensor_buft_overrides"]
    if field.offset != ptr or field.size != ptr or not (
            ftype is ctypes.c_void_p or getattr(ftype, "_type_", None) is not None):
        raise OverrideError(f"llama-cpp-python {version}: tensor_buft_overrides is not a pointer at "
                            f"offset {ptr} (offset {field.offset}, size {field.size})")
    if ctypes.sizeof(BuftOverride) != 2 * ptr:
        raise OverrideError("unexpected size of llama_model_tensor_buft_override")


def cpu_buffer_type() -> int:
    """ggml_backend_cpu_buffer_type(): the buffer type meaning "system RAM"."""
    from llama_cpp._ggml import libggml

    fn = libggml.ggml_backend_cpu_buffer_type
    fn.restype = ctypes.c_void_p
    fn.argtypes = []
    buft = fn()
    if not buft:
        raise OverrideError("ggml_backend_cpu_buffer_type() returned NULL")
    return buft


def build_override_array(patterns: list[str]) -> tuple[ctypes.Array, list[bytes]]:
    """The NULL-terminated array for `patterns` (all to the CPU buffer type), and the
    encoded pattern bytes that must stay alive with it."""
    import re

    encoded = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise LlamactlError(f"bad tensor pattern {p!r}: {exc}") from exc
        encoded.append(p.encode("utf-8"))
    buft = cpu_buffer_type()
    array = (BuftOverride * (len(encoded) + 1))()
    for i, raw in enumerate(encoded):
        array[i].pattern = raw
        array[i].buft = buft
    array[len(encoded)].pattern = None
    array[len(encoded)].buft = None
    return array, encoded


_CLASS: Any = None


def _override_class() -> Any:
    """A llama_cpp.Llama subclass that sets tensor_buft_overrides on the model parameters
    Llama.__init__ creates, before the model is loaded."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import llama_cpp

    class OverrideLlama(bindings.llama_class()):  # type: ignore[misc,valid-type]
        def __init__(self, model_path: str, *, cpu_tensor_patterns: list[str], **kwargs: Any):
            array, keep = build_override_array(cpu_tensor_patterns)
            self._llamactl_buft_overrides = array
            self._llamactl_patterns_bytes = keep
            self.cpu_tensor_patterns = list(cpu_tensor_patterns)
            self._llamactl_params_seen = 0
            super().__init__(model_path, **kwargs)
            address = ctypes.addressof(array)
            if self._llamactl_params_seen == 0 or self.model_params.tensor_buft_overrides != address:
                self.close()
                raise OverrideError(
                    f"llama-cpp-python {llama_cpp.__version__} did not take the tensor overrides "
                    "(Llama.__init__ no longer builds model_params as expected)",
                    hint="run without --cpu-moe, or use a supported llama-cpp-python (>=0.3.36,<0.4)",
                )

        @property
        def model_params(self) -> Any:
            return self.__dict__["_llamactl_model_params"]

        @model_params.setter
        def model_params(self, value: Any) -> None:
            value.tensor_buft_overrides = ctypes.addressof(self._llamactl_buft_overrides)
            self._llamactl_params_seen += 1
            self.__dict__["_llamactl_model_params"] = value

    _CLASS = OverrideLlama
    return _CLASS


def load_llama(model_path: Path | str, cpu_tensor_patterns: list[str], **llama_kwargs: Any) -> Any:
    """Construct the engine's llama_cpp.Llama (llamactl.engine.bindings.llama_class) with the
    tensors matching `cpu_tensor_patterns` placed in CPU memory (llama.cpp regex search on
    tensor names). With no patterns, no override is set."""
    if not cpu_tensor_patterns:
        return bindings.llama_class()(str(model_path), **llama_kwargs)
    check_bindings()
    cls = _override_class()
    return cls(str(model_path), cpu_tensor_patterns=list(cpu_tensor_patterns), **llama_kwargs)
