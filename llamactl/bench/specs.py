"""What a benchmark runs: llama-bench's test specs (pp N, tg N, pg P,N at a depth) and the
sweeps of load parameters (comma-separated values; every combination is one load). Each
swept value is read by llamactl.load's parsers, so a value means in bench what it means in
chat and plan."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, fields
from typing import Sequence

from llamactl import load
from llamactl.errors import UsageError

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
