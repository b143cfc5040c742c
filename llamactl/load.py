"""The load specification: how a model is loaded (context, GPU layers, MoE experts in RAM,
KV cache type, flash attention, batch sizes, threads), parsed and validated once.

`load_spec(...)` turns raw option values (strings from the command line, numbers from code)
into a `LoadSpec`; constructing a `LoadSpec` directly runs the same checks, so no invalid
specification exists anywhere. `plan`, `chat`, `bench` and the engine take a `LoadSpec`
and never re-check its fields. Each rule is written once here, with one message:

- KV cache types: `KV_TYPES` (what llama.cpp 0.3.36 accepts for `type_k`/`type_v`, checked
  by loading a model with each); a quantized type needs flash attention, because llama.cpp
  cannot create a context with a quantized V cache without it.
- `--gpu-layers`: 'auto' (the memory plan decides), -1 (every layer) or a count (0 or more).
- `--ctx`: a number of tokens, or 'max' (the largest context the memory plan finds room for).
- `--flash-attn on|off|auto`: `flash_attn` True, False or None (auto: the memory plan turns
  it on when the attention scores would take a real share of memory, and always for a
  quantized KV type). A quantized KV type with flash attention off is refused.
- `--kv-cache full|chunked|auto` (Llama 4's chunked-attention layers; other models have one
  cache): 'full' keeps n_ctx cells on every layer (llama.cpp's swa_full), 'chunked' keeps a
  window of 8192 + n_ubatch cells on the chunked layers, 'auto' lets the memory plan choose.
- sizes (`parse_size`, for --vram, --ram, --split-max-size ...): a number of bytes, or a
  number with a unit. `KiB MiB GiB TiB` (also `Ki Mi Gi Ti`) are binary (2**10 ...);
  `KB MB GB TB` and the bare suffixes `K M G T` are decimal (10**3 ...), as llama.cpp's
  gguf-split and the Hugging Face Hub count. A bare suffix never means more bytes than the
  user may have: `--vram 24G` is 24e9 bytes, a little under a "24 GB" card's 24 GiB.

Adding a field (a draft model, a rope scaling, a cache mode): give it a default in LoadSpec,
a parser in `load_spec` if it comes as text, and its rule in `LoadSpec._check`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from llamactl.errors import UsageError

AUTO = "auto"
ALL_LAYERS = -1
CTX_MAX = "max"
KV_CACHE_MODES = ("full", "chunked", AUTO)
_ON = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class KvType:
    """One KV cache element type: its ggml type id and its storage (elements per block,
    bytes per block)."""

    name: str
    ggml_type: int
    block: int
    block_bytes: int

    @property
    def quantized(self) -> bool:
        return self.block > 1


# What llama.cpp accepts for the KV cache (its own --cache-type-k/-v list), with ggml's ids.
KV_TYPES: dict[str, KvType] = {t.name: t for t in (
    KvType("f32", 0, 1, 4),
    KvType("f16", 1, 1, 2),
    KvType("bf16", 30, 1, 2),
    KvType("q8_0", 8, 32, 34),
    KvType("q4_0", 2, 32, 18),
    KvType("q4_1", 3, 32, 20),
    KvType("iq4_nl", 20, 32, 18),
    KvType("q5_0", 6, 32, 22),
    KvType("q5_1", 7, 32, 24),
)}
KV_TYPES_TEXT = ", ".join(KV_TYPES)


def kv_type(name: str) -> KvType:
    """The KvType called `name` (any case); UsageError naming the choices otherwise."""
    key = str(name).strip().lower()
    if key not in KV_TYPES:
        raise UsageError(f"unknown --kv-type {name!r}", hint=f"one of: {KV_TYPES_TEXT}")
    return KV_TYPES[key]


def parse_gpu_layers(value: int | str | None) -> int | str:
    """'auto' (or None) -> 'auto'; '-1' -> -1 (every layer); 'N' -> N (0 or more)."""
    if value is None:
        return AUTO
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--gpu-layers takes a number or 'auto', not {value!r}",
                         hint="-1 puts every layer on the GPU, 0 none") from None
    if n < ALL_LAYERS:
        raise UsageError(f"--gpu-layers must be -1 (all), 0 or more, or 'auto', not {n}")
    return n


_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
SIZE_HELP = "K/M/G/T and KB/MB/GB/TB are decimal, KiB/MiB/GiB/TiB binary"


def parse_size(text: str | int, option: str = "size") -> int:
    """Bytes from '80GiB' (binary), '24GB' or '24G' (decimal), '512MiB', '1.5T', or a plain
    byte count. UsageError (exit 2) naming `option` for anything else, negatives included."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"{option} must not be negative, not {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or (m.group(3) and not m.group(2)):
        raise UsageError(f"{option}: not a size: {text!r}",
                         hint=f"use a size such as 80GiB, 24GB or 512MiB ({SIZE_HELP})")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    base = 1024 if binary else 1000
    return int(number * base ** _POWERS[unit])


def parse_ctx(value: int | str | None) -> tuple[int | None, bool]:
    """(ctx, ctx_max): None -> (None, False); 'max' -> (None, True); 'N' -> (N, False)."""
    if value is None:
        return None, False
    text = str(value).strip().lower()
    if text == CTX_MAX:
        return None, True
    try:
        return int(text), False
    except ValueError:
        raise UsageError(f"--ctx takes a number of tokens or 'max', not {value!r}") from None


def parse_flash_attn(value: bool | str | None) -> bool | None:
    """'on'/True -> True, 'off'/False -> False, 'auto'/None -> None."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    if text not in _ON:
        raise UsageError(f"--flash-attn takes on, off or auto, not {value!r}")
    return _ON[text]


def parse_kv_cache(value: str | None) -> str:
    text = AUTO if value is None else str(value).strip().lower()
    if text not in KV_CACHE_MODES:
        raise UsageError(f"--kv-cache takes full, chunked or auto, not {value!r}",
                         hint="full: exact prefix reuse; chunked: about a quarter of the KV memory "
                              "on Llama 4")
    return text


@dataclass(frozen=True)
class LoadSpec:
    """How to load a model. `ctx` None: the model's trained context capped by the memory
    plan (`ctx_max`: the largest that fits); `gpu_layers` 'auto': the memory plan decides,
    -1: every layer; `cpu_moe` N: the routed experts of the first N layers stay in RAM
    (None: the plan decides); `flash_attn` None: the plan decides; `kv_cache` 'auto': the
    plan decides; `threads` None: llama.cpp's choice."""

    ctx: int | None = None
    gpu_layers: int | str = AUTO
    cpu_moe: int | None = None
    kv_type: str = "f16"
    flash_attn: bool | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    threads: int | None = None
    kv_cache: str = AUTO
    ctx_max: bool = False

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        object.__setattr__(self, "gpu_layers", parse_gpu_layers(self.gpu_layers))
        kv = kv_type(self.kv_type)
        object.__setattr__(self, "kv_type", kv.name)
        object.__setattr__(self, "flash_attn", parse_flash_attn(self.flash_attn))
        object.__setattr__(self, "kv_cache", parse_kv_cache(self.kv_cache))
        if kv.quantized and self.flash_attn is False:
            raise UsageError(f"--kv-type {kv.name} needs --flash-attn (llama.cpp cannot use a "
                             "quantized V cache without flash attention)",
                             hint="use --flash-attn on (or auto), or --kv-type f16")
        if self.ctx is not None and self.ctx < 1:
            raise UsageError(f"--ctx must be at least 1, not {self.ctx}")
        if self.ctx is not None and self.ctx_max:
            raise UsageError("--ctx is either a number or 'max'")
        if self.cpu_moe is not None and self.cpu_moe < 0:
            raise UsageError(f"--cpu-moe must be 0 or more, not {self.cpu_moe}")
        if self.n_batch < 1:
            raise UsageError(f"--batch-size must be at least 1, not {self.n_batch}")
        if self.n_ubatch < 1:
            raise UsageError(f"--ubatch-size must be at least 1, not {self.n_ubatch}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")
        # llama.cpp never runs a micro-batch larger than the batch
        object.__setattr__(self, "n_ubatch", min(self.n_ubatch, self.n_batch))

    @property
    def kv(self) -> KvType:
        return KV_TYPES[self.kv_type]

    @property
    def planned_gpu_layers(self) -> int | None:
        """What the memory planner takes: None for 'auto', else the count (-1: all)."""
        return None if self.gpu_layers == AUTO else int(self.gpu_layers)

    def replace(self, **changes: Any) -> "LoadSpec":
        """A copy with `changes`, checked again."""
        return replace(self, **changes)

    def for_draft(self, n_ctx: int, gpu_layers: int | str = AUTO) -> "LoadSpec":
        """The load specification of a draft model for a target loaded as this one: the
        target's context (the draft follows the same conversation), KV type, flash
        attention, batches and threads; its own placement (`gpu_layers`), no MoE choices."""
        return replace(self, ctx=int(n_ctx), ctx_max=False, gpu_layers=gpu_layers, cpu_moe=None,
                       kv_cache=AUTO)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_spec(*, ctx: int | str | None = None, gpu_layers: int | str | None = AUTO,
              cpu_moe: int | None = None, kv_type: str = "f16", flash_attn: bool | str | None = None,
              n_batch: int = 512, n_ubatch: int = 512, threads: int | None = None,
              kv_cache: str | None = AUTO) -> LoadSpec:
    """The LoadSpec for raw option values (as the CLI receives them); UsageError (exit 2)
    with one message per broken rule."""
    n_ctx, ctx_max = parse_ctx(ctx)
    return LoadSpec(ctx=n_ctx, ctx_max=ctx_max, gpu_layers=parse_gpu_layers(gpu_layers), cpu_moe=cpu_moe,
                    kv_type=kv_type, flash_attn=parse_flash_attn(flash_attn), n_batch=int(n_batch),
                    n_ubatch=int(n_ubatch), threads=threads, kv_cache=parse_kv_cache(kv_cache))
