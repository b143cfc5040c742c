"""Measurements in llama-bench's vocabulary, taken through the engine that chat uses.

Tests:
  pp N     prompt processing: N random tokens evaluated in one go (tokens/s = N / time)
  tg N     text generation: one random token, then N tokens generated one at a time
           (N decodes, as llama-bench counts them; tokens/s = N / time)
  pg P,N   a prompt of P tokens then N generated tokens (tokens/s = (P + N) / time)
  depth D  any of the above with D random tokens already in the context: the D tokens are
           evaluated first (not timed), then the test reuses that prefix.

Each test runs one uncounted warm-up, then `reps` counted repetitions; the mean and sample
standard deviation of tokens/s are taken over the counted repetitions only. Prompts are
random token ids (no tokenizer effects), sampling is greedy, end-of-sequence is ignored.

Every combination of the swept load parameters and models is loaded once through
`Engine.load` and runs every test. A combination that fails (a missing model, a load error)
becomes an error row; the others still run.

The core returns data; `llamactl.cli.bench` renders it."""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from llamactl import load
from llamactl.engine.types import Stats
from llamactl.errors import LlamactlError, UsageError

HISTORY_FILE = "bench-history.jsonl"

# --------------------------------------------------------------------------- test specs


@dataclass(frozen=True)
class TestSpec:
    n_prompt: int = 0
    n_gen: int = 0
    depth: int = 0

    @property
    def kind(self) -> str:
        if self.n_prompt and self.n_gen:
            return "pg"
        return "pp" if self.n_prompt else "tg"

    @property
    def name(self) -> str:
        """llama-bench's names: pp512, tg128, pp512+tg128, with ` @ d4096` for a depth."""
        if self.kind == "pg":
            base = f"pp{self.n_prompt}+tg{self.n_gen}"
        elif self.kind == "pp":
            base = f"pp{self.n_prompt}"
        else:
            base = f"tg{self.n_gen}"
        return f"{base} @ d{self.depth}" if self.depth else base

    @property
    def counted_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def context_needed(self) -> int:
        """Tokens the context must hold: depth, prompt (tg: one token), generated tokens,
        plus one so that llama.cpp never sees a prompt of n_ctx tokens."""
        return self.depth + max(self.n_prompt, 1) + self.n_gen + 1


_SPEC_RE = re.compile(r"^\s*(pp|tg|pg)\s*(\d+)\s*(?:,\s*(\d+)\s*)?$", re.IGNORECASE)


def parse_test_spec(text: str, depth: int = 0) -> TestSpec:
    """'pp 512' / 'pp512', 'tg 128', 'pg 512,128' -> TestSpec. Raises UsageError (exit 2)."""
    m = _SPEC_RE.match(text or "")
    if not m:
        raise UsageError(f"unknown test spec: {text!r}",
                         hint="use 'pp N' (prompt), 'tg N' (generation) or 'pg P,N' (both)")
    kind, a, b = m.group(1).lower(), int(m.group(2)), m.group(3)
    if kind == "pg":
        if b is None:
            raise UsageError(f"unknown test spec: {text!r}", hint="pg takes two numbers: 'pg 512,128'")
        spec = TestSpec(n_prompt=a, n_gen=int(b), depth=depth)
        if spec.n_prompt < 1 or spec.n_gen < 1:
            raise UsageError(f"test spec {text!r}: both numbers must be at least 1")
        return spec
    if b is not None:
        raise UsageError(f"unknown test spec: {text!r}", hint=f"{kind} takes one number: '{kind} {a}'")
    if a < 1:
        raise UsageError(f"test spec {text!r}: the token count must be at least 1")
    return TestSpec(n_prompt=a, depth=depth) if kind == "pp" else TestSpec(n_gen=a, depth=depth)


def build_tests(*, n_prompt: Sequence[int] = (512,), n_gen: Sequence[int] = (128,),
                pg: Sequence[tuple[int, int]] = (), specs: Sequence[str] = (),
                depths: Sequence[int] = (0,)) -> list[TestSpec]:
    """The test list, as llama-bench orders it: for each depth, the pp tests, the tg tests,
    the pg tests, then explicit specs. A count of 0 (`-p 0`) means no such test."""
    tests: list[TestSpec] = []
    for d in depths or (0,):
        if d < 0:
            raise UsageError(f"bad --depth value: {d}", hint="a depth is a number of tokens, 0 or more")
        tests += [TestSpec(n_prompt=p, depth=d) for p in n_prompt if p > 0]
        tests += [TestSpec(n_gen=n, depth=d) for n in n_gen if n > 0]
        tests += [TestSpec(n_prompt=p, n_gen=n, depth=d) for p, n in pg]
        tests += [parse_test_spec(s, depth=d) for s in specs]
    seen: set[TestSpec] = set()
    unique = [t for t in tests if not (t in seen or seen.add(t))]
    if not unique:
        raise UsageError("no tests to run", hint="give -p N, -n N, --pg P,N or --test SPEC")
    return unique


# --------------------------------------------------------------------------- sweeps


def _split(option: str, text: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise UsageError(f"bad {option} value: {text!r}", hint="give comma-separated values, e.g. 1,2,4")
    return parts


def parse_int_list(option: str, text: str, *, minimum: int = 1) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; anything else is exit 2 naming the value."""
    out = []
    for part in _split(option, text):
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"bad {option} value: {part!r}", hint="expected a whole number") from None
        if value < minimum:
            raise UsageError(f"bad {option} value: {part!r}", hint=f"expected a number >= {minimum}")
        out.append(value)
    return out


def parse_gpu_layers(text: str) -> list[int | str]:
    """'auto,0,-1,99' -> ['auto', 0, -1, 99], each value as llamactl.load reads it."""
    return [load.parse_gpu_layers(part) for part in _split("--gpu-layers", text)]


def parse_bool_list(option: str, text: str) -> list[bool]:
    table = {"1": True, "on": True, "true": True, "yes": True,
             "0": False, "off": False, "false": False, "no": False}
    out = []
    for part in _split(option, text):
        if part.lower() not in table:
            raise UsageError(f"bad {option} value: {part!r}", hint="expected 0/1 (or on/off)")
        out.append(table[part.lower()])
    return out


def parse_kv_types(text: str) -> list[str]:
    return [load.kv_type(part).name for part in _split("--kv-type", text)]


@dataclass(frozen=True)
class LoadParams:
    """One combination of the swept load parameters, as given (None: the default); `spec`
    validates it. A sweep may hold combinations that break a rule (--kv-type q8_0,f16
    --flash-attn 0,1): those become error rows, the others run."""

    gpu_layers: int | str = "auto"
    threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    n_ctx: int | None = None
    kv_type: str = "f16"
    flash_attn: bool = False

    def spec(self, default_ctx: int | None = None) -> load.LoadSpec:
        """The LoadSpec of this combination (UsageError when it breaks a rule)."""
        return load.load_spec(ctx=self.n_ctx or default_ctx, gpu_layers=self.gpu_layers,
                              threads=self.threads, n_batch=self.n_batch, n_ubatch=self.n_ubatch,
                              kv_type=self.kv_type, flash_attn=self.flash_attn)


@dataclass
class Sweep:
    gpu_layers: list[int | str] = field(default_factory=lambda: ["auto"])
    threads: list[int | None] = field(default_factory=lambda: [None])
    n_batch: list[int] = field(default_factory=lambda: [512])
    n_ubatch: list[int] = field(default_factory=lambda: [512])
    n_ctx: list[int | None] = field(default_factory=lambda: [None])
    kv_type: list[str] = field(default_factory=lambda: ["f16"])
    flash_attn: list[bool] = field(default_factory=lambda: [False])

    def combinations(self) -> list[LoadParams]:
        """Every combination, in a stable order (the first option varies slowest)."""
        return [LoadParams(*combo) for combo in itertools.product(
            self.gpu_layers, self.threads, self.n_batch, self.n_ubatch, self.n_ctx,
            self.kv_type, self.flash_attn)]

    def check(self) -> None:
        """UsageError (the rule's own message, exit 2) when no combination is valid: nothing
        could run, so the flags are wrong, as they would be for `chat` or `plan`."""
        errors = []
        for params in self.combinations():
            try:
                params.spec()
            except UsageError as exc:
                errors.append(exc)
            else:
                return
        if errors:
            raise errors[0]

    def swept(self) -> list[str]:
        """Names of the parameters given more than one value."""
        return [f.name for f in fields(self) if len(getattr(self, f.name)) > 1]


def check_depths(tests: Sequence[TestSpec], sweep: Sweep) -> None:
    """A test that cannot fit in an explicitly given context is exit 2, before any work."""
    for ctx in sweep.n_ctx:
        if ctx is None:
            continue
        for t in tests:
            if t.context_needed > ctx:
                what = f"--depth {t.depth} with {t.name.split(' @')[0]}" if t.depth else t.name
                raise UsageError(
                    f"{what} needs a context of {t.context_needed} tokens; --ctx is {ctx}",
                    hint="raise --ctx or lower --depth / the test size")


def default_ctx(tests: Sequence[TestSpec]) -> int:
    """llama-bench sizes the context to the test; round up to llama.cpp's 256-token pad."""
    need = max(t.context_needed for t in tests)
    return int(math.ceil(need / 256) * 256)


# --------------------------------------------------------------------------- statistics


@dataclass
class Sample:
    """One repetition: tokens counted, wall seconds, time to first token."""

    tokens: int
    seconds: float
    ttft: float | None = None
    prompt_seconds: float | None = None
    generation_seconds: float | None = None

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def repeat(run_once: Callable[[], Sample], reps: int, warmup: bool = True) -> list[Sample]:
    """Run one uncounted warm-up (when asked), then `reps` counted runs; return the counted
    samples only."""
    if warmup:
        run_once()
    return [run_once() for _ in range(reps)]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1, as llama-bench); sd is 0 for one value."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return mean, sd


# --------------------------------------------------------------------------- results


@dataclass
class BenchRow:
    model: str                       # the reference as given
    test: str = ""
    model_path: str | None = None
    model_type: str | None = None    # llama.cpp's description: "llama 1B Q4_K - Medium"
    model_size: int | None = None    # bytes of weights
    model_params: int | None = None
    backend: str | None = None
    gpu_layers: int | str | None = None
    gpu_layers_requested: int | str | None = None
    threads: int | None = None            # threads generating
    threads_batch: int | None = None      # threads evaluating prompts
    n_batch: int | None = None
    n_ubatch: int | None = None
    n_ctx: int | None = None
    kv_type: str | None = None
    flash_attn: bool | None = None
    n_prompt: int = 0
    n_gen: int = 0
    n_depth: int = 0
    repetitions: int = 0
    tps_mean: float | None = None
    tps_sd: float | None = None
    samples_tps: list[float] = field(default_factory=list)
    samples_seconds: list[float] = field(default_factory=list)
    ttft_seconds: float | None = None      # mean over the counted repetitions
    load_seconds: float | None = None
    peak_rss_bytes: int | None = None      # peak resident memory since this model's load
    gpu_memory_bytes: int | None = None    # device memory taken, where a GPU is used
    error: str | None = None
    error_type: str | None = None
    error_hint: str | None = None
    exit_code: int | None = None
    timestamp: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- memory probes


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024
    except Exception:
        return None


def _ggml():
    import ctypes

    from llama_cpp import _ggml

    lib = _ggml.libggml
    if not getattr(lib, "_llamactl_bench_typed", False):
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_count.argtypes = []
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_memory.restype = None
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
        lib._llamactl_bench_typed = True
    return lib


def devices() -> list[dict[str, Any]]:
    """ggml's devices: name, description, kind (cpu/gpu/igpu/accel), free and total bytes."""
    try:
        import ctypes

        lib = _ggml()
        kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
        out = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            out.append({
                "name": (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                "description": (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                "kind": kinds.get(lib.ggml_backend_dev_type(dev), "other"),
                "free_bytes": int(free.value), "total_bytes": int(total.value),
            })
        return out
    except Exception:
        return []


def _gpu_free() -> dict[str, int]:
    return {d["name"]: d["free_bytes"] for d in devices() if d["kind"] in ("gpu", "igpu")}


def _gpu_used(before: dict[str, int]) -> int | None:
    if not before:
        return None
    after = _gpu_free()
    return sum(max(0, before[n] - after.get(n, before[n])) for n in before)


def _backend(n_gpu_layers: int | None) -> str:
    gpus = [d for d in devices() if d["kind"] in ("gpu", "igpu")]
    if not gpus or not n_gpu_layers:
        return "CPU"
    names = sorted({re.sub(r"\d+$", "", d["name"]) or d["name"] for d in gpus})
    return ",".join(names)


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        pairs.add((phys, core))
                    phys = core = None
        return len(pairs) or None
    except OSError:
        return None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _ggml_build() -> tuple[str | None, str | None]:
    """ggml's version and the commit llama.cpp was built from (`ggml_version`/`ggml_commit`)."""
    out: list[str | None] = []
    for name in ("ggml_version", "ggml_commit"):
        try:
            import ctypes

            fn = getattr(_ggml(), name)
            fn.restype = ctypes.c_char_p
            fn.argtypes = []
            out.append((fn() or b"").decode(errors="replace") or None)
        except Exception:
            out.append(None)
    return out[0], out[1]


def machine_info() -> dict[str, Any]:
    """What a result must be read with: CPU, cores, RAM, GPUs, llama.cpp's build and
    system info, llamactl's version."""
    from importlib import metadata

    from llamactl import __version__

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": _physical_cores(),
        "ram_bytes": _ram_bytes(),
        "llamactl_version": __version__,
    }
    try:
        info["llama_cpp_python_version"] = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        info["llama_cpp_python_version"] = None
    try:
        import llama_cpp

        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        info["gpu_offload_supported"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:  # a broken build still gets a machine record
        info["llama_cpp_system_info"] = f"unavailable: {exc}"
        info["gpu_offload_supported"] = False
    info["ggml_version"], info["ggml_commit"] = _ggml_build()
    info["llama_cpp_build"] = (f"ggml {info['ggml_version']} ({info['ggml_commit']}), vendored by "
                               f"llama-cpp-python {info['llama_cpp_python_version']}")
    info["gpus"] = [{"name": d["name"], "description": d["description"],
                     "memory_total_bytes": d["total_bytes"]}
                    for d in devices() if d["kind"] in ("gpu", "igpu")]
    return info


# --------------------------------------------------------------------------- measuring


def random_tokens(rng: random.Random, n_vocab: int, n: int) -> list[int]:
    return [rng.randrange(n_vocab) for _ in range(n)]


def _drain(stream: Iterable[Any]) -> Stats:
    """Consume a stream_tokens iterator; return its final Stats. The engine turns Ctrl-C
    into finish_reason "interrupted"; a benchmark must stop there, not go on."""
    stats = None
    for item in stream:
        stats = item
    if not isinstance(stats, Stats):
        raise LlamactlError("the engine's stream ended without its statistics")
    if stats.finish_reason == "interrupted":
        raise KeyboardInterrupt
    return stats


def measure_once(engine: Any, test: TestSpec, rng: random.Random) -> Sample:
    """One repetition of `test` through `engine.stream_tokens`. The depth prefix (if any)
    is evaluated first, untimed, from an empty cache; the test then reuses it."""
    from llamactl.engine import Sampling

    n_vocab = int(engine.llama.n_vocab())
    prefix = random_tokens(rng, n_vocab, test.depth)
    prompt = random_tokens(rng, n_vocab, max(test.n_prompt, 1) if test.n_gen else test.n_prompt)
    if prefix:
        _drain(engine.stream_tokens(prefix, Sampling(temperature=0.0, max_tokens=0),
                                    ignore_eos=True, reuse_cache=False))
    sampling = Sampling(temperature=0.0, max_tokens=test.n_gen)
    t0 = time.perf_counter()
    stats = _drain(engine.stream_tokens(prefix + prompt, sampling, ignore_eos=True,
                                        reuse_cache=bool(prefix)))
    seconds = time.perf_counter() - t0
    evaluated = stats.prompt_tokens_evaluated
    if evaluated != len(prompt):
        raise LlamactlError(f"{test.name}: the engine evaluated {evaluated} prompt tokens "
                            f"instead of {len(prompt)} (the depth prefix was not reused)")
    ttft = stats.ttft_seconds
    if test.n_gen and stats.completion_tokens != test.n_gen:
        raise LlamactlError(f"{test.name}: the engine generated {stats.completion_tokens} tokens "
                            f"instead of {test.n_gen}")
    if not test.n_gen or not ttft:
        # pp: no token is sampled; the time a user waits for a first token is the prompt's
        ttft = stats.prompt_seconds or seconds
    return Sample(tokens=test.counted_tokens, seconds=seconds, ttft=ttft,
                  prompt_seconds=stats.prompt_seconds, generation_seconds=stats.generation_seconds)


def bench_test(engine: Any, test: TestSpec, reps: int, *, warmup: bool = True,
               rng: random.Random | None = None,
               measure: Callable[[Any, TestSpec, random.Random], Sample] = measure_once) -> dict[str, Any]:
    """Run a test `reps` times (after a warm-up) and summarise the counted runs.
    `measure` is the seam that takes one repetition."""
    rng = rng or random.Random(0)
    samples = repeat(lambda: measure(engine, test, rng), reps, warmup)
    tps = [s.tps for s in samples]
    mean, sd = mean_sd(tps)
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    return {
        "tps_mean": mean, "tps_sd": sd,
        "samples_tps": tps, "samples_seconds": [s.seconds for s in samples],
        "ttft_seconds": statistics.fmean(ttfts) if ttfts else None,
        "repetitions": len(samples),
    }


def _describe(llama: Any) -> tuple[str | None, int | None, int | None]:
    try:
        import ctypes

        import llama_cpp

        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(llama.model, buf, ctypes.sizeof(buf))
        return (buf.value.decode(errors="replace"), int(llama_cpp.llama_model_size(llama.model)),
                int(llama_cpp.llama_model_n_params(llama.model)))
    except Exception:
        return None, None, None


def _error_fields(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LlamactlError):
        return {"error": exc.message, "error_type": type(exc).__name__, "error_hint": exc.hint,
                "exit_code": exc.exit_code}
    return {"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__, "exit_code": 1}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


ProgressFn = Callable[[str], None]


def run_bench(models: Sequence[str], tests: Sequence[TestSpec], sweep: Sweep, *,
              reps: int = 5, warmup: bool = True, seed: int = 1234,
              resolve: Callable[[str], Path] | None = None,
              progress: ProgressFn | None = None,
              verbose: bool = False) -> Iterator[BenchRow]:
    """Yield one BenchRow per (model, load combination, test), in order. A combination that
    cannot be resolved or loaded yields one error row per test and the sweep goes on."""
    from llamactl.engine import Engine, EngineOptions

    if reps < 1:
        raise UsageError(f"bad --repetitions value: {reps}", hint="at least 1")
    check_depths(tests, sweep)
    say = progress or (lambda _msg: None)
    combos = sweep.combinations()
    auto_ctx = default_ctx(tests)

    for ref in models:
        try:
            path = Path(resolve(ref)) if resolve else _resolve_path(ref)
            trained = _trained_context(path)
        except LlamactlError as exc:
            for params in combos:
                for t in tests:
                    yield _error_row(ref, None, params, t, exc)
            continue
        for params in combos:
            n_ctx = params.n_ctx or auto_ctx
            base = dict(model=ref, model_path=str(path), gpu_layers_requested=params.gpu_layers,
                        n_batch=params.n_batch, n_ubatch=params.n_ubatch, kv_type=params.kv_type,
                        flash_attn=params.flash_attn)
            try:
                if params.n_ctx is None and trained and auto_ctx > trained:
                    deepest = max(tests, key=lambda t: t.context_needed)
                    raise UsageError(f"{deepest.name} needs a context of {deepest.context_needed} "
                                     f"tokens; {Path(path).name} was trained for {trained}",
                                     hint="lower --depth or the test size, or pass --ctx")
                spec = params.spec(default_ctx=auto_ctx)
                say(f"loading {ref} ({_combo_text(params)}, ctx {n_ctx})")
                _reset_peak_rss()
                gpu_before = _gpu_free()
                engine = Engine.load(path, EngineOptions(load=spec, seed=seed, verbose=verbose))
            except (LlamactlError, ValueError, RuntimeError, OSError) as exc:
                for t in tests:
                    yield _error_row(ref, path, params, t, exc)
                continue
            try:
                desc, size, n_params = _describe(engine.llama)
                ngl = engine.plan.n_gpu_layers
                threads = int(engine.llama.n_threads)
                threads_batch = int(engine.llama.n_threads_batch)
                common = dict(base, model_type=desc, model_size=size, model_params=n_params,
                              backend=_backend(ngl), gpu_layers=ngl, threads=threads,
                              threads_batch=threads_batch, n_ctx=engine.n_ctx,
                              load_seconds=engine.load_seconds)
                rng = random.Random(seed)
                for t in tests:
                    say(f"{ref}: {t.name} ({'1 warm-up + ' if warmup else ''}{reps} runs)")
                    try:
                        summary = bench_test(engine, t, reps, warmup=warmup, rng=rng)
                    except (LlamactlError, ValueError, RuntimeError) as exc:
                        yield _error_row(ref, path, params, t, exc, **{
                            k: common[k] for k in ("model_type", "model_size", "model_params",
                                                   "backend", "gpu_layers", "threads",
                                                   "threads_batch", "n_ctx",
                                                   "load_seconds")})
                        continue
                    yield BenchRow(**common, **summary, test=t.name, n_prompt=t.n_prompt,
                                   n_gen=t.n_gen, n_depth=t.depth, peak_rss_bytes=peak_rss_bytes(),
                                   gpu_memory_bytes=_gpu_used(gpu_before), timestamp=_now())
            finally:
                engine.close()


def _error_row(ref: str, path: Path | None, params: LoadParams, t: TestSpec,
               exc: BaseException, **extra: Any) -> BenchRow:
    row = dict(model=ref, model_path=str(path) if path else None,
               gpu_layers_requested=params.gpu_layers, threads=params.threads,
               n_batch=params.n_batch, n_ubatch=params.n_ubatch, n_ctx=params.n_ctx,
               kv_type=params.kv_type, flash_attn=params.flash_attn)
    row.update(extra)
    return BenchRow(**row, test=t.name, n_prompt=t.n_prompt, n_gen=t.n_gen, n_depth=t.depth,
                    timestamp=_now(), **_error_fields(exc))


def _combo_text(p: LoadParams) -> str:
    parts = [f"ngl {p.gpu_layers}"]
    if p.threads:
        parts.append(f"t {p.threads}")
    parts += [f"b {p.n_batch}", f"ub {p.n_ubatch}", f"kv {p.kv_type}", f"fa {int(p.flash_attn)}"]
    return ", ".join(parts)


def _resolve_path(ref: str) -> Path:
    from llamactl.errors import NotFound

    path = Path(ref).expanduser()
    if not path.is_file():
        raise NotFound(f"model not found: {ref}", hint="give a path to a .gguf file")
    return path


def _trained_context(path: Path) -> int | None:
    from llamactl.gguf_info import read_gguf

    return read_gguf(path).context_length


# --------------------------------------------------------------------------- history


def history_path() -> Path:
    from llamactl import paths

    return paths.data_dir() / HISTORY_FILE


def save_history(rows: Sequence[BenchRow], machine: dict[str, Any]) -> Path:
    """Append one line per row to the history (complete lines, under a lock, fsynced)."""
    from llamactl import paths
    from llamactl.fsutil import file_lock

    target = history_path()
    paths.ensure(target.parent)
    saved_at = _now()
    payload = "".join(json.dumps({"saved_at": saved_at, **r.to_dict(), "machine": machine},
                                 ensure_ascii=False, default=str) + "\n" for r in rows)
    with file_lock(target.with_name(target.name + ".lock")):
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return target


def load_history() -> tuple[list[dict[str, Any]], int]:
    """(records, number of unreadable lines skipped)."""
    target = history_path()
    records: list[dict[str, Any]] = []
    bad = 0
    try:
        with open(target, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    bad += 1
    except FileNotFoundError:
        pass
    return records, bad
