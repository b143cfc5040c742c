"""The memory plan: which layers go to the GPU, which MoE expert tensors stay in system
RAM, and what context size fits. Pure data: it reads a GGUF header, looks at the devices
(or takes --vram/--ram), and returns a Plan. Nothing is loaded, nothing printed.

How llama.cpp places a model (what the plan mirrors, llama-cpp-python 0.3.36):
- `n_gpu_layers = k` (k >= 1) puts the output layer (output_norm, output) and the last
  k - 1 repeating layers on the GPU (llama.cpp counts the output layer first; checked on
  0.3.36's build through which tensors it repacks for the CPU); k = n_layer + 1 is all.
  `token_embd` always stays on the CPU; a model with tied embeddings gets a second copy of
  it on the GPU as its output layer.
- Tensor overrides (`blk\\.N\\.ffn_(up|down|gate)_exps` -> CPU) keep the routed experts
  of layer N in RAM while the rest of that layer sits on the GPU.
- The KV cache of each layer lives with the layer (offload_kqv). n_ctx is rounded up to a
  multiple of 256. K and V each take n_ctx * n_head_kv * head_dim elements of the cache
  type per layer.
- Llama 4's chunked-attention layers (3 of every 4; llama.cpp fixes the chunk at 8192
  tokens whatever the GGUF says) keep n_ctx cells with the full-size cache (swa_full) and
  min(n_ctx, 8192 + n_ubatch) cells, rounded up to 256, with the chunked one
  (llama-kv-cache-iswa.cpp; one sequence). `--kv-cache auto` keeps the full cache when it
  places the model as well as the chunked one would, else takes the chunked one.
- Compute buffers are estimated (the attention scores without flash attention, the
  feed-forward activations, the logits of one micro-batch); they are labelled estimates.
  `--flash-attn auto` turns flash attention on when it frees at least FA_AUTO_MIN of compute
  buffer at the planned context (or the KV type is quantized, which needs it).
- `--ctx max`: the largest multiple of 256 that fits the placement the plan picks at the
  smallest context (or the one asked with --gpu-layers/--cpu-moe), at most the trained
  context; the plan says what limits it. A refused plan lists what would make it fit.

One responsibility, the memory plan (hence over 400 lines): the shape of a model as the
planner sees it, the bytes of each placement, the search over placements, contexts and
KV-cache modes, and the alternatives a refused plan offers belong together (each candidate
is priced by the same `_usage`); the load specification it plans for is llamactl.load's,
the devices llamactl.devices'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamactl.errors import InsufficientResources, UsageError
from llamactl.fsutil import human_bytes
from llamactl.load import KV_TYPES, LoadSpec

MIB = 1024 * 1024
GIB = 1024 * MIB

CTX_PAD = 256
DEFAULT_CTX = 32768          # the largest context tried when the user gives none
PARTIAL_CTX = 8192           # the context used when the model does not fit the GPU whole
MIN_CTX = 512
CUDA_OVERHEAD = 512 * MIB    # CUDA context, cuBLAS workspace: not reported by llama.cpp
# The GPU check (benchmarks/gpu/run.sh) measures the two CUDA estimates; its figures live in
# this file (benchmarks/gpu/apply.py writes it). Absent or null values: the constants here.
CUDA_MEASURED = Path(__file__).resolve().parent / "data" / "cuda_measured.json"
MARGIN_FRACTION = 0.02       # safety margin: 2% of the GPU's memory, at least 256 MiB
MIN_MARGIN = 256 * MIB
LLAMA4_CHUNK = 8192          # llama.cpp's Llama 4 attention chunk (src/models/llama4.cpp: fixed)
FA_AUTO_MIN = 256 * MIB      # --flash-attn auto: on when it frees at least this much
CTX_SEARCH_CAP = 1 << 24     # --ctx max for a model whose header gives no trained context

EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(up|down|gate|gate_up)_(ch|)exps\.")
LAYER_RE = re.compile(r"^blk\.(\d+)\.")


class DoesNotFit(InsufficientResources):
    """Even the smallest plan does not fit (exit 8); `plan` is the refused plan."""

    def __init__(self, message: str, *, plan: "Plan", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.plan = plan


def expert_pattern(layers: list[int]) -> str:
    """The llama.cpp tensor-override pattern that matches the routed experts of `layers`."""
    alt = "|".join(str(i) for i in layers)
    return rf"blk\.({alt})\.ffn_(up|down|gate)_exps"


@dataclass
class ModelShape:
    """What the plan needs from a GGUF header."""
    path: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: list[int]
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ff: int
    n_ff_exp: int
    n_expert: int
    n_expert_used: int
    context_length: int | None
    tied: bool
    swa_layers: set[int]
    n_masks: int
    n_swa: int                       # the attention chunk of the swa_layers (0: none)
    layer_bytes: list[int]           # all tensors of each layer
    expert_bytes: list[int]          # the routed-expert tensors of each layer
    input_bytes: int                 # token_embd (always CPU)
    output_bytes: int                # output_norm + output (with the output layer)
    other_bytes: int                 # anything else (rope_freqs ...): with layer 0
    tensor_bytes: int
    output_copy_bytes: int           # tied models: the output layer's copy of token_embd

    @property
    def is_moe(self) -> bool:
        return any(self.expert_bytes)

    def kv_bytes_per_cell(self, layer: int, kv_type: str) -> int:
        kv = KV_TYPES[kv_type]
        block, size = kv.block, kv.block_bytes
        kv_heads = self.n_head_kv[layer]
        k = kv_heads * self.head_dim_k
        v = kv_heads * self.head_dim_v
        return (k // block * size) + (v // block * size)


def model_shape(info: Any) -> ModelShape:
    """Reduce a GGUFInfo to what the planner needs."""
    md = info.metadata
    arch = info.architecture

    def key(suffix: str, default: Any = None) -> Any:
        return md.get(f"{arch}.{suffix}", default)

    n_layer = int(info.block_count or 0)
    n_embd = int(key("embedding_length", 0))
    n_head_raw = key("attention.head_count", 1)
    n_head = int(max(n_head_raw) if isinstance(n_head_raw, list) else n_head_raw)
    kv_raw = key("attention.head_count_kv", n_head)
    n_head_kv = [int(x) for x in kv_raw] if isinstance(kv_raw, list) else [int(kv_raw)] * n_layer
    head_dim = n_embd // n_head if n_head else 0
    head_dim_k = int(key("attention.key_length", head_dim))
    head_dim_v = int(key("attention.value_length", head_dim))
    n_vocab = int(info.vocab_size or 0)
    n_ff_raw = key("feed_forward_length", 0)
    n_ff = int(max(n_ff_raw) if isinstance(n_ff_raw, list) else n_ff_raw)
    n_ff_exp = int(key("expert_feed_forward_length", 0) or 0)
    n_expert = int(info.expert_count or 0)
    n_expert_used = int(info.expert_used_count or 0)

    swa_layers: set[int] = set()
    n_masks = 1
    if arch == "llama4":
        window = key("attention.sliding_window")
        if window is None or window != 0:
            # llama.cpp: chunked attention (8192) on 3 of every 4 layers
            swa_layers = {i for i in range(n_layer) if i % 4 < 3}
            n_masks = 2

    layer_bytes = [0] * n_layer
    expert_bytes = [0] * n_layer
    input_bytes = output_bytes = other_bytes = 0
    has_output = False
    for t in info.tensors:
        m = LAYER_RE.match(t.name)
        if m and int(m.group(1)) < n_layer:
            i = int(m.group(1))
            layer_bytes[i] += t.nbytes
            if EXPERT_RE.match(t.name):
                expert_bytes[i] += t.nbytes
                if not n_ff_exp and len(t.shape) == 3:
                    n_ff_exp = t.shape[1] if "down" not in t.name else t.shape[0]
        elif t.name == "token_embd.weight":
            input_bytes += t.nbytes
        elif t.name in ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias"):
            output_bytes += t.nbytes
            has_output = has_output or t.name == "output.weight"
        else:
            other_bytes += t.nbytes
    tied = not has_output
    return ModelShape(
        path=str(info.paths[0]), architecture=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_vocab=n_vocab,
        n_ff=n_ff, n_ff_exp=n_ff_exp, n_expert=n_expert, n_expert_used=n_expert_used,
        context_length=info.context_length, tied=tied, swa_layers=swa_layers, n_masks=n_masks,
        n_swa=LLAMA4_CHUNK if swa_layers else 0,
        layer_bytes=layer_bytes, expert_bytes=expert_bytes, input_bytes=input_bytes,
        output_bytes=output_bytes, other_bytes=other_bytes, tensor_bytes=info.tensor_bytes,
        output_copy_bytes=input_bytes if tied else 0,
    )


def padded_ctx(n_ctx: int) -> int:
    return (n_ctx + CTX_PAD - 1) // CTX_PAD * CTX_PAD


def chunked_cells(shape: ModelShape, n_ctx: int, n_ubatch: int = 512) -> int:
    """Cells of a chunked-attention layer's cache with the chunked cache (swa_full off):
    llama.cpp keeps the chunk plus one micro-batch, rounded up to 256, never more than n_ctx."""
    return min(padded_ctx(n_ctx), padded_ctx(shape.n_swa + n_ubatch))


def layer_cells(shape: ModelShape, n_ctx: int, *, chunked: bool = False, n_ubatch: int = 512) -> list[int]:
    """KV cells of each layer at context n_ctx."""
    full = padded_ctx(n_ctx)
    window = chunked_cells(shape, n_ctx, n_ubatch) if chunked and shape.swa_layers else full
    return [window if i in shape.swa_layers else full for i in range(shape.n_layer)]


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str = "f16",
                   layers: range | list[int] | None = None, *, chunked: bool = False,
                   n_ubatch: int = 512) -> int:
    """The KV cache llama.cpp allocates for `layers` (all by default) at context n_ctx, with
    the full-size cache or (`chunked`) the chunked one on Llama 4's chunked layers."""
    cells = layer_cells(shape, n_ctx, chunked=chunked, n_ubatch=n_ubatch)
    layers = range(shape.n_layer) if layers is None else layers
    return sum(cells[i] * shape.kv_bytes_per_cell(i, kv_type) for i in layers)


_cuda_cache: dict[str, tuple[int, float]] = {}


def cuda_constants() -> tuple[int, float]:
    """(per-process CUDA overhead in bytes, factor on the estimated GPU compute buffer):
    the GPU check's measurements from CUDA_MEASURED, else CUDA_OVERHEAD and 1.0."""
    key = str(CUDA_MEASURED)
    if key not in _cuda_cache:
        import json

        overhead, factor = CUDA_OVERHEAD, 1.0
        try:
            data = json.loads(CUDA_MEASURED.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            if isinstance(data.get("cuda_overhead_bytes"), int) and data["cuda_overhead_bytes"] > 0:
                overhead = data["cuda_overhead_bytes"]
            if isinstance(data.get("compute_buffer_factor"), (int, float)) and data["compute_buffer_factor"] > 0:
                factor = float(data["compute_buffer_factor"])
        _cuda_cache[key] = (overhead, factor)
    return _cuda_cache[key]


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool,
                  chunked: bool = False) -> dict[str, int]:
    """Estimated compute buffers of one micro-batch: 'graph' (the whole graph, on the device
    holding the layers) and its parts. The attention scores are those of a global layer
    (n_ctx keys); with the chunked cache the chunked layers' mask is the window's."""
    f32 = 4
    n_kv = padded_ctx(n_ctx)
    n_kv_swa = chunked_cells(shape, n_ctx, n_ubatch) if chunked and shape.swa_layers else n_kv
    mask_cells = n_kv + (shape.n_masks - 1) * n_kv_swa
    ub = n_ubatch
    act = ub * shape.n_embd * f32
    if flash_attn:
        attn = ub * shape.n_head * shape.head_dim_v * f32 * 2
        masks = mask_cells * ub * 2
    else:
        attn = shape.n_head * n_kv * ub * f32
        masks = mask_cells * ub * f32
    ff = max(shape.n_ff if not shape.is_moe or shape.n_ff else 0,
             shape.n_ff_exp * max(shape.n_expert_used, 1) + (shape.n_ff_exp if shape.is_moe else 0))
    ffn = ub * ff * f32 * 3 + ub * shape.n_expert * f32
    logits = ub * shape.n_vocab * f32
    graph = max(attn + 3 * act, ffn + 2 * act, logits + act) + masks
    return {"graph": graph, "attention": attn, "ffn": ffn, "logits": logits, "masks": masks}


@dataclass
class Plan:
    n_gpu_layers: int
    n_ctx: int
    cpu_tensor_patterns: list[str]
    warnings: list[str]
    model: str = ""
    architecture: str = ""
    n_layers: int = 0
    cpu_moe: int = 0                     # experts of layers 0..cpu_moe-1 kept in RAM
    strategy: str = ""                   # full-gpu | experts-to-cpu | partial-layers | cpu-only
    fits: bool = True
    kv_type: str = "f16"
    flash_attn: bool = False
    kv_cache: str = "full"               # full | chunked (Llama 4's chunked layers; others: full)
    kv_cells: list[int] = field(default_factory=list)   # KV cells of each layer
    requested: dict[str, Any] = field(default_factory=dict)  # kv_cache, flash_attn, ctx as asked
    ctx_limit: str = ""                  # --ctx max: what limits the context
    alternatives: list[str] = field(default_factory=list)  # a refused plan: what would fit
    n_batch: int = 512
    n_ubatch: int = 512
    ctx_requested: int | None = None
    vram: int = 0                        # the GPU memory planned for (free, or --vram)
    ram: int = 0                         # the system RAM planned for (available, or --ram)
    margin: int = 0
    gpus: list[dict[str, Any]] = field(default_factory=list)
    devices_source: str = "none"
    gpu: dict[str, int] = field(default_factory=dict)   # weights, output_copy, kv_cache, compute, overhead, total
    cpu: dict[str, int] = field(default_factory=dict)   # weights, kv_cache, compute, total
    weights_total: int = 0               # == the GGUF's tensor data size
    expert_layers_on_cpu: list[int] = field(default_factory=list)
    layers_on_gpu: list[int] = field(default_factory=list)
    output_on_gpu: bool = False
    mmproj: str | None = None            # the vision projector planned with the model

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "architecture": self.architecture, "n_layers": self.n_layers,
            "fits": self.fits, "strategy": self.strategy,
            "n_gpu_layers": self.n_gpu_layers, "n_ctx": self.n_ctx, "ctx_requested": self.ctx_requested,
            "cpu_moe": self.cpu_moe, "cpu_tensor_patterns": list(self.cpu_tensor_patterns),
            "expert_layers_on_cpu": list(self.expert_layers_on_cpu),
            "layers_on_gpu": len(self.layers_on_gpu), "output_on_gpu": self.output_on_gpu,
            "kv_type": self.kv_type, "flash_attn": self.flash_attn, "kv_cache": self.kv_cache,
            "kv_cells": sorted(set(self.kv_cells)), "requested": dict(self.requested),
            "ctx_limit": self.ctx_limit, "alternatives": list(self.alternatives),
            "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
            "vram": self.vram, "ram": self.ram, "margin": self.margin,
            "devices_source": self.devices_source, "gpus": list(self.gpus),
            "gpu": dict(self.gpu), "cpu": dict(self.cpu),
            "weights_total": self.weights_total, "mmproj": self.mmproj, "warnings": list(self.warnings),
            "estimates": "weights and KV cache are exact; compute buffers and overheads are estimates",
        }

    def summary(self) -> str:
        return (f"{self.n_gpu_layers}/{self.n_layers + 1} layers on GPU, ctx {self.n_ctx}, "
                f"experts of {len(self.expert_layers_on_cpu)} layers in RAM, "
                f"GPU {human_bytes(self.gpu.get('total', 0))}, RAM {human_bytes(self.cpu.get('total', 0))}")


def _usage(shape: ModelShape, ngl: int, cpu_moe: int, n_ctx: int, kv_type: str, flash_attn: bool,
           n_ubatch: int, has_gpu: bool, chunked: bool = False,
           vision: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """Bytes on each device for one placement. `chunked`: Llama 4's chunked KV cache.
    `vision`: a vision projector's (weights, compute buffer), on the GPU when any layer is
    (as the engine loads it), else in RAM."""
    L = shape.n_layer
    ngl = max(0, min(ngl, L + 1))
    # llama.cpp (as vendored in 0.3.36): i_gpu_start = max(n_layer + 1 - ngl, 0); slot
    # n_layer is the output layer, so the output goes first, then the last layers.
    first_gpu = max(L + 1 - ngl, 0)
    gpu_layers = list(range(first_gpu, L)) if ngl else []
    output_gpu = ngl >= 1
    moe_cpu = [i for i in range(min(cpu_moe, L)) if shape.expert_bytes[i]]
    g_w = c_w = 0
    for i in range(L):
        on_gpu = i >= first_gpu and ngl > 0
        if on_gpu:
            experts_cpu = shape.expert_bytes[i] if i < cpu_moe else 0
            g_w += shape.layer_bytes[i] - experts_cpu
            c_w += experts_cpu
        else:
            c_w += shape.layer_bytes[i]
    c_w += shape.input_bytes
    if output_gpu:
        g_w += shape.output_bytes
    else:
        c_w += shape.output_bytes
    # small tensors outside the layers (rope_freqs) go with layer 0's device
    if gpu_layers and first_gpu == 0:
        g_w += shape.other_bytes
    else:
        c_w += shape.other_bytes
    output_copy = shape.output_copy_bytes if output_gpu else 0
    kv_gpu = kv_cache_bytes(shape, n_ctx, kv_type, gpu_layers, chunked=chunked, n_ubatch=n_ubatch)
    kv_cpu = kv_cache_bytes(shape, n_ctx, kv_type, [i for i in range(L) if i not in set(gpu_layers)],
                            chunked=chunked, n_ubatch=n_ubatch)
    comp = compute_bytes(shape, n_ctx, n_ubatch, flash_attn, chunked)
    act = n_ubatch * shape.n_embd * 4
    if ngl:
        cuda_overhead, compute_factor = cuda_constants()
        g_comp = int(comp["graph"] * compute_factor)
        if ngl == L + 1 and not moe_cpu:
            c_comp = 2 * act
        elif ngl == L + 1:
            c_comp = comp["ffn"] + 2 * act
        else:  # some layers run on the CPU
            c_comp = max(comp["attention"] + 3 * act, comp["ffn"] + 2 * act) + comp["masks"]
        overhead = cuda_overhead
    else:
        g_comp = 0
        c_comp = comp["graph"]
        overhead = 0
    out_buf = shape.n_vocab * 4  # logits of one output (host)
    gpu = {"weights": g_w, "output_copy": output_copy, "kv_cache": kv_gpu, "compute": g_comp,
           "overhead": overhead}
    cpu = {"weights": c_w, "kv_cache": kv_cpu, "compute": c_comp + out_buf}
    if vision != (0, 0):
        side = gpu if ngl else cpu
        side["vision_weights"], side["vision_compute"] = vision
    gpu["total"] = sum(gpu.values())
    cpu["total"] = sum(cpu.values())
    return {"gpu": gpu, "cpu": cpu, "ngl": ngl, "gpu_layers": gpu_layers, "output_gpu": output_gpu,
            "moe_cpu": moe_cpu, "weights_total": g_w + c_w}


def _candidates(shape: ModelShape, gpu_layers: int | None, cpu_moe: int | None) -> list[tuple[int, int, str]]:
    """(ngl, cpu_moe, strategy) from the most GPU to the least: GPU use falls along it."""
    L = shape.n_layer
    full = L + 1
    out: list[tuple[int, int, str]] = []
    if gpu_layers is not None and cpu_moe is not None:
        return [(gpu_layers, cpu_moe, "manual")]
    if gpu_layers is not None:
        if shape.is_moe:
            return [(gpu_layers, k, "manual" if k == 0 else "experts-to-cpu") for k in range(0, L + 1)]
        return [(gpu_layers, 0, "manual")]
    if cpu_moe is not None:
        return [(n, cpu_moe, "manual" if n == full else "partial-layers") for n in range(full, -1, -1)]
    out.append((full, 0, "full-gpu"))
    if shape.is_moe:
        for k in range(1, L + 1):
            if shape.expert_bytes[k - 1]:
                out.append((full, k, "experts-to-cpu"))
        moe_all = L
    else:
        moe_all = 0
    for n in range(L, -1, -1):
        out.append((n, moe_all, "partial-layers" if n else "cpu-only"))
    return out


def _ctx_limit(shape: ModelShape, cap: int) -> int:
    trained = shape.context_length or cap
    return min(trained, cap)


def chunked_cost(shape: ModelShape, n_ubatch: int) -> str:
    """What the chunked cache costs a conversation, in one sentence (measured on llama.cpp
    0.3.36: tests/test_longctx_cache.py)."""
    window = padded_ctx(shape.n_swa + n_ubatch)
    return (f"the chunked layers keep only the last {window} tokens, so a new turn that changes the "
            f"conversation at a point whose {shape.n_swa}-token chunk began more than {window} tokens "
            f"before the end of the cache (a /retry after a long answer, an edited or trimmed history) "
            f"re-evaluates from that chunk's start, up to {shape.n_swa - 1} tokens more than with "
            f"--kv-cache full; a turn added after the last answer reuses the whole cache")


@dataclass
class _Env:
    """What every placement search of one plan shares."""
    shape: ModelShape
    budget: int
    ram: int
    has_gpu: bool
    gpu_layers: int | None
    cpu_moe: int | None
    n_ubatch: int
    vision: tuple[int, int] = (0, 0)       # a vision projector's (weights, compute buffer)

    def fits_gpu(self, u: dict[str, Any]) -> bool:
        return u["ngl"] == 0 or u["gpu"]["total"] <= self.budget

    def fits_cpu(self, u: dict[str, Any]) -> bool:
        return u["cpu"]["total"] <= self.ram


@dataclass
class _Solution:
    u: dict[str, Any]
    strategy: str
    cpu_moe: int
    n_ctx: int
    fits: bool
    kv_type: str
    flash_attn: bool
    chunked: bool
    ctx_limit: str = ""

    def rank(self) -> tuple:
        """Better placements rank higher: fits, then context, then more on the GPU."""
        return (self.fits, self.n_ctx, self.u["ngl"], -len(self.u["moe_cpu"]))


def _solve(env: _Env, ctx: int | None, ctx_max: bool, kv_type: str, flash_attn: bool,
           chunked: bool) -> _Solution:
    """The placement and context for one setting (KV type, flash attention, cache mode)."""
    shape, gpu_layers, cpu_moe, n_ubatch = env.shape, env.gpu_layers, env.cpu_moe, env.n_ubatch

    def usage(ngl: int, k: int, n_ctx: int) -> dict[str, Any]:
        return _usage(shape, ngl, k, n_ctx, kv_type, flash_attn, n_ubatch, env.has_gpu, chunked, env.vision)

    def choose(n_ctx: int) -> tuple[dict[str, Any], str, int] | None:
        """The first candidate that fits the GPU (None if none does)."""
        if not env.has_gpu and gpu_layers is None:
            return usage(0, 0, n_ctx), "cpu-only", 0
        for ngl, k, strategy in _candidates(shape, gpu_layers, cpu_moe):
            u = usage(ngl, k, n_ctx)
            if env.fits_gpu(u):
                return u, strategy, k
        return None

    def solution(chosen: tuple[dict[str, Any], str, int] | None, n_ctx: int, limit: str = "") -> _Solution:
        fits = chosen is not None and env.fits_cpu(chosen[0])
        if chosen is None:
            # nothing fits the GPU (only with manual settings): keep what was asked
            ngl, k, strategy = _candidates(shape, gpu_layers, cpu_moe)[0]
            chosen = (usage(ngl, k, n_ctx), strategy, k)
        u, strategy, k = chosen
        return _Solution(u, strategy, k, n_ctx, fits, kv_type, flash_attn, chunked, limit)

    if ctx_max:
        return _solve_max(env, usage, choose, solution)
    if ctx is not None:
        return solution(choose(ctx), ctx)
    # no context asked: prefer the whole model on the GPU at a smaller context, down to
    # PARTIAL_CTX; otherwise PARTIAL_CTX with part of the model in RAM, and smaller
    # contexts only when even that does not fit.
    top = _ctx_limit(shape, DEFAULT_CTX)
    ctx_list = []
    c = top
    while c >= MIN_CTX:
        ctx_list.append(c)
        c //= 2
    partial_ctx = _ctx_limit(shape, PARTIAL_CTX)
    if env.has_gpu and gpu_layers is None and cpu_moe is None:
        for c in ctx_list:
            if c < partial_ctx:
                break
            u = usage(shape.n_layer + 1, 0, c)
            if env.fits_gpu(u) and env.fits_cpu(u):
                return solution((u, "full-gpu", 0), c)
    chosen, n_ctx = None, partial_ctx
    for c in [c for c in ctx_list if c <= partial_ctx] or [partial_ctx]:
        n_ctx = c
        chosen = choose(c)
        if chosen is not None and env.fits_cpu(chosen[0]):
            break
    return solution(chosen, n_ctx)


def _solve_max(env: _Env, usage: Any, choose: Any, solution: Any) -> _Solution:
    """--ctx max: the largest context (a multiple of CTX_PAD, at most the trained one) for
    the placement asked (--gpu-layers/--cpu-moe), or, with the placement left to the plan,
    for the placement that holds the most context while every layer stays on the GPU (MoE
    experts move to RAM only as far as that buys context); when no such placement fits, the
    first one that fits at the smallest context."""
    shape = env.shape
    cap = shape.context_length or CTX_SEARCH_CAP
    top = max(CTX_PAD, cap // CTX_PAD * CTX_PAD)
    low = min(MIN_CTX, top)

    def ok(ngl: int, k: int, n_ctx: int) -> bool:
        u = usage(ngl, k, n_ctx)
        return env.fits_gpu(u) and env.fits_cpu(u)

    def largest(ngl: int, k: int) -> int:
        """The largest fitting multiple of CTX_PAD up to `top` (0: not even `low`)."""
        if not ok(ngl, k, low):
            return 0
        if ok(ngl, k, top):
            return top
        lo, hi = max(1, low // CTX_PAD), top // CTX_PAD    # ok(lo * 256), not ok(hi * 256)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(ngl, k, mid * CTX_PAD):
                lo = mid
            else:
                hi = mid
        return lo * CTX_PAD

    if not env.has_gpu and env.gpu_layers is None:
        candidates = [(0, 0, "cpu-only")]
    elif env.gpu_layers is not None or env.cpu_moe is not None:
        candidates = _candidates(shape, env.gpu_layers, env.cpu_moe)
    else:
        candidates = _candidates(shape, None, None)
    best: tuple[int, int, int, str] | None = None      # (n_ctx, ngl, k, strategy)
    whole = [c for c in candidates if c[0] == shape.n_layer + 1] if env.has_gpu else []
    for ngl, k, strategy in whole or candidates:
        n = largest(ngl, k)
        if n and (best is None or n > best[0]):
            best = (n, ngl, k, strategy)
        if best is not None and (best[0] == top or not whole):
            break
    if best is None and whole:
        for ngl, k, strategy in candidates:
            n = largest(ngl, k)
            if n:
                best = (n, ngl, k, strategy)
                break
    if best is None:
        return solution(choose(low), low, f"nothing fits even at {low} tokens")
    n_ctx, ngl, k, strategy = best
    if n_ctx == top:
        limit = (f"the model's trained context ({cap} tokens)" if shape.context_length
                 else f"the search cap of {cap} tokens (the header gives no trained context)")
    else:
        over = usage(ngl, k, n_ctx + CTX_PAD)
        if ngl and not env.fits_gpu(over):
            limit = (f"GPU memory: {n_ctx + CTX_PAD} tokens would need {human_bytes(over['gpu']['total'])} "
                     f"of {human_bytes(env.budget)}")
        else:
            limit = (f"RAM: {n_ctx + CTX_PAD} tokens would need {human_bytes(over['cpu']['total'])} "
                     f"of {human_bytes(env.ram)}")
    return solution((usage(ngl, k, n_ctx), strategy, k), n_ctx, limit)


def _fa_worth_it(shape: ModelShape, n_ctx: int, n_ubatch: int) -> int:
    """Compute-buffer bytes flash attention frees at n_ctx."""
    return (compute_bytes(shape, n_ctx, n_ubatch, False)["graph"]
            - compute_bytes(shape, n_ctx, n_ubatch, True)["graph"])


def plan(info: Any, spec: LoadSpec | None = None, *, vram: int | None = None,
         ram: int | None = None, devices: Any = None, margin: int | None = None,
         projector: Any = None) -> Plan:
    """The plan for a GGUFInfo loaded as `spec` (validated: see llamactl.load). `vram`/`ram`
    (bytes) replace detection; `devices` (a devices.Devices) replaces probing. Raises
    DoesNotFit (exit 8) when even the smallest plan does not fit in VRAM + RAM, with the
    refused plan as `.plan` and what would fit in its hint and `plan.alternatives`.
    `projector` (an engine.images.ProjectorInfo): a vision projector loaded with the model,
    planned too."""
    spec = spec or LoadSpec()
    ctx, kv_type = spec.ctx, spec.kv_type
    n_batch, n_ubatch, cpu_moe = spec.n_batch, spec.n_ubatch, spec.cpu_moe
    gpu_layers = spec.planned_gpu_layers
    if gpu_layers is not None and gpu_layers < 0:
        gpu_layers = 1 << 30  # -1: every layer
    shape = model_shape(info)
    vision = (int(projector.tensor_bytes), int(projector.compute_bytes())) if projector is not None else (0, 0)
    if shape.n_layer <= 0:
        raise UsageError(f"{shape.path}: no block_count in its header; cannot plan a model of "
                         f"architecture {shape.architecture!r}")
    warnings: list[str] = []

    gpus: list[dict[str, Any]] = []
    source = "none"
    if vram is None or ram is None:
        if devices is None:
            from llamactl import devices as devmod

            devices = devmod.detect(use_ggml=vram is None)
    if vram is None:
        vram = devices.vram_free
        gpus = [g.to_dict() for g in devices.gpus]
        source = devices.gpu_source
        if devices.gpus and devices.gpu_source in ("nvml", "nvidia-smi"):
            try:
                from llamactl.devices import supports_gpu_offload

                can_offload = supports_gpu_offload()
            except Exception:
                can_offload = True
            if not can_offload:
                warnings.append("this llama.cpp build is CPU-only: the GPU part of this plan "
                                "applies after a CUDA reinstall (see `llamactl doctor`)")
        if len(devices.gpus) > 1:
            warnings.append(f"{len(devices.gpus)} GPUs: planned as one pool of "
                            f"{human_bytes(vram)}; llama.cpp splits layers across them (--split-mode layer)")
    else:
        source = "--vram"
    if ram is None:
        ram = devices.ram.available if devices is not None and devices.ram else 0
        ram_source = "detected"
    else:
        ram_source = "--ram"
    has_gpu = vram > 0
    if margin is None:
        margin = max(MIN_MARGIN, int(vram * MARGIN_FRACTION)) if has_gpu else 0
    budget = max(0, vram - margin)
    env = _Env(shape, budget, ram, has_gpu, gpu_layers, cpu_moe, n_ubatch, vision)

    # flash attention: as asked, or (auto) on when it frees a real share at this context
    flash_attn = spec.flash_attn
    if flash_attn is None:
        probe_ctx = ctx or (shape.context_length or CTX_SEARCH_CAP if spec.ctx_max
                            else _ctx_limit(shape, DEFAULT_CTX))
        flash_attn = spec.kv.quantized or _fa_worth_it(shape, probe_ctx, n_ubatch) >= FA_AUTO_MIN
    # the KV cache mode: only Llama 4's chunked layers have a choice
    if not shape.swa_layers or spec.kv_cache == "full":
        sol = _solve(env, ctx, spec.ctx_max, kv_type, flash_attn, False)
    elif spec.kv_cache == "chunked":
        sol = _solve(env, ctx, spec.ctx_max, kv_type, flash_attn, True)
    else:
        full = _solve(env, ctx, spec.ctx_max, kv_type, flash_attn, False)
        chunk = _solve(env, ctx, spec.ctx_max, kv_type, flash_attn, True)
        sol = full if full.rank() >= chunk.rank() else chunk
        if sol is chunk and chunk.fits:
            kv_full = full.u["gpu"]["kv_cache"] + full.u["cpu"]["kv_cache"]
            kv_chunk = chunk.u["gpu"]["kv_cache"] + chunk.u["cpu"]["kv_cache"]
            if not full.fits:
                why = "does not fit"
            elif full.n_ctx < chunk.n_ctx:
                why = f"holds {full.n_ctx} tokens"
            else:
                why = "puts more of the model in RAM"
            warnings.append(
                f"--kv-cache auto: chunked KV cache ({human_bytes(kv_chunk)}; the full one, "
                f"{human_bytes(kv_full)} at ctx {full.n_ctx}, {why}): {chunked_cost(shape, n_ubatch)}")
    u, strategy, k, n_ctx, fits = sol.u, sol.strategy, sol.cpu_moe, sol.n_ctx, sol.fits
    manual = gpu_layers is not None or cpu_moe is not None

    if ctx is None and not spec.ctx_max and n_ctx < _ctx_limit(shape, DEFAULT_CTX) and fits and has_gpu:
        warnings.append(f"context set to {n_ctx} tokens to fit memory (ask for more with --ctx)")
    if shape.context_length and n_ctx > shape.context_length:
        warnings.append(f"context {n_ctx} is beyond the model's trained {shape.context_length} tokens")
    if not has_gpu and u["ngl"] == 0:
        warnings.append("no GPU memory to plan for: everything runs on the CPU "
                        "(give --vram SIZE to plan for a GPU)")
    elif not has_gpu:
        warnings.append(f"no GPU found: --gpu-layers {u['ngl']} passed on as asked")
    if has_gpu and not flash_attn and strategy not in ("full-gpu", "manual"):
        saved = _fa_worth_it(shape, n_ctx, n_ubatch)
        if saved >= FA_AUTO_MIN:
            warnings.append(f"--flash-attn on would free about {human_bytes(saved)} of GPU compute "
                            "buffer for more of the model")
    if shape.swa_layers and not sol.chunked and n_ctx > padded_ctx(shape.n_swa + n_ubatch):
        saved_kv = (kv_cache_bytes(shape, n_ctx, kv_type, n_ubatch=n_ubatch)
                    - kv_cache_bytes(shape, n_ctx, kv_type, chunked=True, n_ubatch=n_ubatch))
        warnings.append(f"Llama 4: full-size KV cache on the chunked-attention layers (exact prefix reuse); "
                        f"--kv-cache chunked would take {human_bytes(saved_kv)} less")
    if manual and has_gpu and not env.fits_gpu(u):
        warnings.append(f"the requested placement needs {human_bytes(u['gpu']['total'])} of GPU memory, "
                        f"{human_bytes(budget)} available")

    moe_cpu_layers = u["moe_cpu"]
    patterns = [expert_pattern(moe_cpu_layers)] if moe_cpu_layers and u["ngl"] > 0 else []
    result = Plan(
        n_gpu_layers=u["ngl"], n_ctx=n_ctx, cpu_tensor_patterns=patterns,
        warnings=warnings, model=shape.path, architecture=shape.architecture, n_layers=shape.n_layer,
        cpu_moe=k if moe_cpu_layers else 0, strategy=strategy if u["ngl"] else "cpu-only", fits=fits,
        kv_type=kv_type, flash_attn=flash_attn, kv_cache="chunked" if sol.chunked else "full",
        kv_cells=layer_cells(shape, n_ctx, chunked=sol.chunked, n_ubatch=n_ubatch),
        requested={"ctx": "max" if spec.ctx_max else ctx, "kv_cache": spec.kv_cache,
                   "flash_attn": {None: "auto", True: "on", False: "off"}[spec.flash_attn]},
        ctx_limit=sol.ctx_limit,
        n_batch=n_batch, n_ubatch=n_ubatch, ctx_requested=ctx,
        vram=vram, ram=ram, margin=margin, gpus=gpus, devices_source=source,
        gpu=u["gpu"], cpu=u["cpu"],
        weights_total=u["weights_total"], expert_layers_on_cpu=moe_cpu_layers,
        layers_on_gpu=u["gpu_layers"], output_on_gpu=u["output_gpu"],
    )
    if not fits and not (manual and env.fits_cpu(u)):
        result.alternatives = _alternatives(env, spec, sol)
        need_gpu = result.gpu.get("total", 0)
        need_cpu = result.cpu.get("total", 0)
        what = "at the smallest context" if spec.ctx_max else f"at ctx {n_ctx}"
        hint = ("what would fit: " + "; ".join(result.alternatives) if result.alternatives else
                "use a smaller quantization of the model or a machine with more memory")
        raise DoesNotFit(
            f"{Path(shape.path).name} does not fit {what}: the smallest plan "
            f"({result.n_gpu_layers} layers on GPU, KV {kv_type} {result.kv_cache}) needs "
            f"{human_bytes(need_gpu)} of GPU memory and {human_bytes(need_cpu)} of RAM; this machine "
            f"has {human_bytes(budget)} GPU (after a {human_bytes(margin)} margin) and "
            f"{human_bytes(ram)} RAM ({ram_source})",
            plan=result,
            hint=hint + "; `llamactl plan MODEL --vram SIZE --ram SIZE` plans for another machine",
        )
    return result


def _describe(sol: _Solution) -> str:
    kv = sol.u["gpu"]["kv_cache"] + sol.u["cpu"]["kv_cache"]
    where = (f"GPU {human_bytes(sol.u['gpu']['total'])}, RAM {human_bytes(sol.u['cpu']['total'])}"
             if sol.u["ngl"] else f"RAM {human_bytes(sol.u['cpu']['total'])}")
    return f"KV {human_bytes(kv)}, {where}"


def _alternatives(env: _Env, spec: LoadSpec, refused: _Solution) -> list[str]:
    """For a refused plan: each single change that makes it fit, with its numbers (the
    chunked cache, a quantized KV type with flash attention, flash attention, experts to
    RAM, a smaller context)."""
    shape = env.shape
    out: list[str] = []
    kv_before = refused.u["gpu"]["kv_cache"] + refused.u["cpu"]["kv_cache"]
    ctx, ctx_max = spec.ctx, spec.ctx_max

    def tried(label: str, sol: _Solution, what: str) -> None:
        if sol.fits:
            out.append(f"{label} ({what}: {_describe(sol)} at ctx {sol.n_ctx})")
        else:
            out.append(f"{label} is not enough alone ({what}: {_describe(sol)} at ctx {sol.n_ctx})")

    if shape.swa_layers and not refused.chunked:
        sol = _solve(env, ctx, ctx_max, refused.kv_type, refused.flash_attn, True)
        tried("--kv-cache chunked", sol, f"KV {human_bytes(kv_before)} -> chunked")
    if not spec.kv.quantized:
        sol = _solve(env, ctx, ctx_max, "q8_0", True, refused.chunked)
        tried("--kv-type q8_0 --flash-attn on", sol, "about half the KV memory")
        if shape.swa_layers and not refused.chunked:
            sol = _solve(env, ctx, ctx_max, "q8_0", True, True)
            tried("--kv-cache chunked --kv-type q8_0 --flash-attn on", sol, "both")
    if not refused.flash_attn:
        sol = _solve(env, ctx, ctx_max, refused.kv_type, True, refused.chunked)
        tried("--flash-attn on", sol, "no attention-score buffer")
    if shape.is_moe and env.cpu_moe is None and env.gpu_layers is not None and env.has_gpu:
        moved = _Env(shape, env.budget, env.ram, True, env.gpu_layers, shape.n_layer, env.n_ubatch, env.vision)
        sol = _solve(moved, ctx, ctx_max, refused.kv_type, refused.flash_attn, refused.chunked)
        tried(f"--cpu-moe {shape.n_layer}", sol, "every layer's experts in RAM")
    if not ctx_max:
        sol = _solve(env, None, True, refused.kv_type, refused.flash_attn, refused.chunked)
        if sol.fits:
            out.append(f"--ctx {sol.n_ctx} (the largest that fits as asked: {_describe(sol)}; "
                       f"limited by {sol.ctx_limit})")
    return [o for o in out if "not enough alone" not in o] + [o for o in out if "not enough alone" in o]


def plan_for_model(gguf_path: Path | str, spec: LoadSpec | None = None, *, vram: int | None = None,
                   ram: int | None = None, devices: Any = None, mmproj: Path | str | None = None) -> Plan:
    """Read the GGUF header at `gguf_path` (first part of a split model) and plan (with the
    vision projector at `mmproj`, when given)."""
    from llamactl.gguf_info import read_gguf

    projector = None
    if mmproj is not None:
        from llamactl.engine.images import ProjectorInfo

        projector = ProjectorInfo.read(mmproj)
    try:
        result = plan(read_gguf(gguf_path), spec, vram=vram, ram=ram, devices=devices, projector=projector)
    except DoesNotFit as exc:
        exc.plan.mmproj = str(mmproj) if mmproj is not None else None
        raise
    result.mmproj = str(mmproj) if mmproj is not None else None
    return result
