"""Taking the measurements: repetitions of each test through the engine's one decode path
(`Engine.stream_tokens`), their statistics, and one `BenchRow` per (model, combination,
test). The memory probes (peak RSS, GPU memory taken) are read around each load."""

from __future__ import annotations

import platform
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from llamactl import devices
from llamactl.bench.specs import LoadParams, Sweep, TestSpec, check_depths, default_ctx
from llamactl.engine.types import Stats
from llamactl.errors import LlamactlError, UsageError

# --------------------------------------------------------------------------- statistics


@dataclass
class Sample:
    """One repetition: tokens counted, wall seconds, time to first token."""

    tokens: int
    seconds: float
    ttft: float | None = None
    prompt_seconds: float | None = None
    generation_seconds: float | None = None
    draft_tokens: int = 0             # proposed by a draft model (speculative decoding)
    draft_accepted_tokens: int = 0

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
    draft: str | None = None               # the draft model (--draft), as given or resolved
    draft_max: int | None = None           # its fixed length (None: adaptive)
    draft_tokens: int | None = None        # proposed over the counted repetitions
    draft_accepted_tokens: int | None = None
    draft_acceptance: float | None = None  # draft_accepted_tokens / draft_tokens
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


def _gpus() -> list[devices.GgmlDevice]:
    return [d for d in devices.ggml_devices() if d.kind in ("gpu", "igpu")]


def _gpu_free() -> dict[str, int]:
    return {d.name: d.free for d in _gpus()}


def _gpu_used(before: dict[str, int]) -> int | None:
    if not before:
        return None
    after = _gpu_free()
    return sum(max(0, before[n] - after.get(n, before[n])) for n in before)


def _backend(n_gpu_layers: int | None) -> str:
    gpus = _gpus()
    if not gpus or not n_gpu_layers:
        return "CPU"
    names = sorted({re.sub(r"\d+$", "", d.name) or d.name for d in gpus})
    return ",".join(names)


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
                  prompt_seconds=stats.prompt_seconds, generation_seconds=stats.generation_seconds,
                  draft_tokens=stats.draft_tokens, draft_accepted_tokens=stats.draft_accepted_tokens)


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
    draft = {}
    if getattr(engine, "draft", None) is not None:
        proposed = sum(s.draft_tokens for s in samples)
        accepted = sum(s.draft_accepted_tokens for s in samples)
        draft = {"draft_tokens": proposed, "draft_accepted_tokens": accepted,
                 "draft_acceptance": accepted / proposed if proposed else None}
    return {
        **draft,
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
              verbose: bool = False, draft: str | None = None,
              draft_max: int | None = None) -> Iterator[BenchRow]:
    """Yield one BenchRow per (model, load combination, test), in order. A combination that
    cannot be resolved or loaded yields one error row per test and the sweep goes on.
    `draft`: a draft model reference (`auto`: the catalog's pair of each model) used for
    speculative decoding, resolved with `resolve`; `draft_max` its fixed length."""
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
            draft_ref = draft_path = None
            if draft is not None:
                from llamactl.draft import resolve_reference

                draft_ref = resolve_reference(ref, draft)
                draft_path = Path(resolve(draft_ref)) if resolve else _resolve_path(draft_ref)
        except LlamactlError as exc:
            for params in combos:
                for t in tests:
                    yield _error_row(ref, None, params, t, exc)
            continue
        for params in combos:
            n_ctx = params.n_ctx or auto_ctx
            base = dict(model=ref, model_path=str(path), gpu_layers_requested=params.gpu_layers,
                        n_batch=params.n_batch, n_ubatch=params.n_ubatch, kv_type=params.kv_type,
                        flash_attn=params.flash_attn, draft=draft_ref,
                        draft_max=draft_max if draft_ref else None)
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
                options = EngineOptions(load=spec, seed=seed, verbose=verbose)
                if draft_path is not None:
                    engine = Engine.load_with_draft(path, options, draft_path, draft_max=draft_max,
                                                    target_name=ref, draft_name=draft_ref)
                else:
                    engine = Engine.load(path, options)
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
                                                   "load_seconds", "draft", "draft_max")})
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
