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
  type per layer. Llama 4's chunked-attention layers keep a full-size cache too
  (llama-cpp-python leaves llama.cpp's swa_full default on).
- Compute buffers are estimated (the attention scores without flash attention, the
  feed-forward activations, the logits of one micro-batch); they are labelled estimates.

One responsibility, about 500 lines: the shape of a model as the planner sees it, the bytes
of each placement, and the search over placements and contexts belong together (each
candidate is priced by the same `_usage`); the load specification it plans for is
llamactl.load's, the devices llamactl.devices'.
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
        layer_bytes=layer_bytes, expert_bytes=expert_bytes, input_bytes=input_bytes,
        output_bytes=output_bytes, other_bytes=other_bytes, tensor_bytes=info.tensor_bytes,
        output_copy_bytes=input_bytes if tied else 0,
    )


def padded_ctx(n_ctx: int) -> int:
    return (n_ctx + CTX_PAD - 1) // CTX_PAD * CTX_PAD


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str = "f16",
                   layers: range | list[int] | None = None) -> int:
    """The KV cache llama.cpp allocates for `layers` (all by default) at context n_ctx."""
    cells = padded_ctx(n_ctx)
    layers = range(shape.n_layer) if layers is None else layers
    return sum(cells * shape.kv_bytes_per_cell(i, kv_type) for i in layers)


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


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int, flash_attn: bool) -> dict[str, int]:
    """Estimated compute buffers of one micro-batch: 'graph' (the whole graph, on the device
    holding the layers) and its parts."""
    f32 = 4
    n_kv = padded_ctx(n_ctx)
    ub = n_ubatch
    act = ub * shape.n_embd * f32
    if flash_attn:
        attn = ub * shape.n_head * shape.head_dim_v * f32 * 2
        masks = shape.n_masks * n_kv * ub * 2
    else:
        attn = shape.n_head * n_kv * ub * f32
        masks = shape.n_masks * n_kv * ub * f32
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
            "kv_type": self.kv_type, "flash_attn": self.flash_attn,
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
           n_ubatch: int, has_gpu: bool, vision: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """Bytes on each device for one placement. `vision`: a vision projector's (weights,
    compute buffer), on the GPU when any layer is (as the engine loads it), else in RAM."""
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
    kv_gpu = kv_cache_bytes(shape, n_ctx, kv_type, gpu_layers)
    kv_cpu = kv_cache_bytes(shape, n_ctx, kv_type, [i for i in range(L) if i not in set(gpu_layers)])
    comp = compute_bytes(shape, n_ctx, n_ubatch, flash_attn)
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


def plan(info: Any, spec: LoadSpec | None = None, *, vram: int | None = None,
         ram: int | None = None, devices: Any = None, margin: int | None = None,
         projector: Any = None) -> Plan:
    """The plan for a GGUFInfo loaded as `spec` (validated: see llamactl.load). `vram`/`ram`
    (bytes) replace detection; `devices` (a devices.Devices) replaces probing. Raises
    InsufficientResources (exit 8) when even the smallest plan does not fit in VRAM + RAM;
    the refused plan is on the exception as `.plan`. `projector` (an
    engine.images.ProjectorInfo): a vision projector loaded with the model, planned too."""
    import functools

    spec = spec or LoadSpec()
    ctx, kv_type, flash_attn = spec.ctx, spec.kv_type, spec.flash_attn
    n_batch, n_ubatch, cpu_moe = spec.n_batch, spec.n_ubatch, spec.cpu_moe
    gpu_layers = spec.planned_gpu_layers
    if gpu_layers is not None and gpu_layers < 0:
        gpu_layers = 1 << 30  # -1: every layer
    shape = model_shape(info)
    vision = (int(projector.tensor_bytes), int(projector.compute_bytes())) if projector is not None else (0, 0)
    usage = functools.partial(_usage, vision=vision)
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

    def fits_gpu(u: dict[str, Any]) -> bool:
        return u["ngl"] == 0 or u["gpu"]["total"] <= budget

    def fits_cpu(u: dict[str, Any]) -> bool:
        return u["cpu"]["total"] <= ram

    def choose(n_ctx: int) -> tuple[dict[str, Any], str, int] | None:
        """The first candidate that fits the GPU (None if none does)."""
        if not has_gpu and gpu_layers is None:
            return usage(shape, 0, 0, n_ctx, kv_type, flash_attn, n_ubatch, False), "cpu-only", 0
        for ngl, k, strategy in _candidates(shape, gpu_layers, cpu_moe):
            u = usage(shape, ngl, k, n_ctx, kv_type, flash_attn, n_ubatch, has_gpu)
            if fits_gpu(u):
                return u, strategy, k
        return None

    chosen = None
    if ctx is not None:
        n_ctx = ctx
        chosen = choose(n_ctx)
        ctx_list = [n_ctx]
    else:
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
        if has_gpu and gpu_layers is None and cpu_moe is None:
            for c in ctx_list:
                if c < partial_ctx:
                    break
                u = usage(shape, shape.n_layer + 1, 0, c, kv_type, flash_attn, n_ubatch, True)
                if fits_gpu(u) and fits_cpu(u):
                    chosen, n_ctx = (u, "full-gpu", 0), c
                    break
        if chosen is None:
            ctx_list = [c for c in ctx_list if c <= partial_ctx] or [partial_ctx]
            for c in ctx_list:
                n_ctx = c
                chosen = choose(c)
                if chosen is not None and fits_cpu(chosen[0]):
                    break
    manual = gpu_layers is not None or cpu_moe is not None
    fits = chosen is not None and fits_cpu(chosen[0])
    if chosen is None:
        # nothing fits the GPU (only with manual settings): keep what was asked
        ngl, k, strategy = _candidates(shape, gpu_layers, cpu_moe)[0]
        u = usage(shape, ngl, k, n_ctx, kv_type, flash_attn, n_ubatch, has_gpu)
        chosen = (u, strategy, k)
    u, strategy, k = chosen
    if ctx is None and n_ctx < _ctx_limit(shape, DEFAULT_CTX) and fits and has_gpu:
        warnings.append(f"context set to {n_ctx} tokens to fit memory (ask for more with --ctx)")
    if shape.context_length and n_ctx > shape.context_length:
        warnings.append(f"context {n_ctx} is beyond the model's trained {shape.context_length} tokens")
    if not has_gpu and u["ngl"] == 0:
        warnings.append("no GPU memory to plan for: everything runs on the CPU "
                        "(give --vram SIZE to plan for a GPU)")
    elif not has_gpu:
        warnings.append(f"no GPU found: --gpu-layers {u['ngl']} passed on as asked")
    if has_gpu and not flash_attn and strategy not in ("full-gpu", "manual"):
        saved = (compute_bytes(shape, n_ctx, n_ubatch, False)["graph"]
                 - compute_bytes(shape, n_ctx, n_ubatch, True)["graph"])
        if saved >= 256 * MIB:
            warnings.append(f"--flash-attn would free about {human_bytes(saved)} of GPU compute "
                            "buffer for more of the model")
    if shape.swa_layers:
        warnings.append("Llama 4 chunked attention: llama.cpp keeps a full-size KV cache on every layer")
    if (gpu_layers is not None or cpu_moe is not None) and has_gpu and not fits_gpu(u):
        warnings.append(f"the requested placement needs {human_bytes(u['gpu']['total'])} of GPU memory, "
                        f"{human_bytes(budget)} available")

    moe_cpu_layers = u["moe_cpu"]
    patterns = [expert_pattern(moe_cpu_layers)] if moe_cpu_layers and u["ngl"] > 0 else []
    result = Plan(
        n_gpu_layers=u["ngl"], n_ctx=n_ctx, cpu_tensor_patterns=patterns,
        warnings=warnings, model=shape.path, architecture=shape.architecture, n_layers=shape.n_layer,
        cpu_moe=k if moe_cpu_layers else 0, strategy=strategy if u["ngl"] else "cpu-only", fits=fits,
        kv_type=kv_type, flash_attn=flash_attn, n_batch=n_batch, n_ubatch=n_ubatch, ctx_requested=ctx,
        vram=vram, ram=ram, margin=margin, gpus=gpus, devices_source=source,
        gpu=u["gpu"], cpu=u["cpu"],
        weights_total=u["weights_total"], expert_layers_on_cpu=moe_cpu_layers,
        layers_on_gpu=u["gpu_layers"], output_on_gpu=u["output_gpu"],
    )
    if not fits and not (manual and fits_cpu(u)):
        need_gpu = result.gpu.get("total", 0)
        need_cpu = result.cpu.get("total", 0)
        raise DoesNotFit(
            f"{Path(shape.path).name} does not fit: even the smallest plan (ctx {n_ctx}, "
            f"{result.n_gpu_layers} layers on GPU) needs {human_bytes(need_gpu)} of GPU memory and "
            f"{human_bytes(need_cpu)} of RAM; this machine has {human_bytes(budget)} GPU "
            f"(after a {human_bytes(margin)} margin) and {human_bytes(ram)} RAM ({ram_source})",
            plan=result,
            hint="use a smaller quantization of the model or a machine with more memory; "
                 "`llamactl plan MODEL --vram SIZE --ram SIZE` plans for another machine",
        )
    return result


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
