"""The generation engine: the one place that constructs `llama_cpp.Llama` and generates.

One decode path, `Engine.stream_tokens`, is used by chat, one-shot mode and bench: it
evaluates the part of the prompt that is not already in the KV cache (the longest common
token prefix with what was evaluated before is kept), then samples token by token and
yields a `Piece` per token and, last, a `Stats`. `Engine.stream_chat` renders messages with
the model's chat template (or `chat_format`) and builds the prompt tokens so that the
conversation so far is reused token for token.

llama.cpp's log never reaches stdout: a log callback installed here drops it, or copies it
to stderr when `verbose` is set.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime as _dt
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llamactl.errors import InsufficientResources, IntegrityError, LlamactlError, NotFound, UsageError

# ---------------------------------------------------------------------------------------
# Data


@dataclass
class EngineOptions:
    n_ctx: int | None = None          # None: the model's trained context capped by the plan
    gpu_layers: int | str = "auto"    # "auto": the memory plan (offload.plan_for_model)
    cpu_moe: int | None = None
    threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    kv_type: str = "f16"
    seed: int | None = None
    verbose: bool = False
    chat_format: str | None = None    # a built-in name (see CHAT_FORMATS) or a .jinja file


@dataclass
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None     # None: until end of turn or a full context; 0: prompt only

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Piece:
    text: str        # may be "" while a multi-byte character is incomplete
    token: int


@dataclass
class Stats:
    prompt_tokens: int                # tokens in the prompt
    prompt_tokens_evaluated: int      # of which evaluated now (the rest came from the KV cache)
    completion_tokens: int            # tokens generated (end-of-turn token not counted)
    prompt_seconds: float             # evaluating the prompt
    generation_seconds: float         # from the end of the prompt to the last token
    ttft_seconds: float               # from the call to the first generated token
    prompt_tps: float                 # prompt_tokens_evaluated / prompt_seconds
    generation_tps: float             # completion_tokens / generation_seconds
    finish_reason: str                # "stop" | "length" | "interrupted"
    context_tokens: int = 0           # tokens in the context after this call (prompt + answer)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# llama.cpp's log


_LOG = {"verbose": False, "callback": None}


def set_llama_log(verbose: bool) -> None:
    """Route llama.cpp's (and ggml's) log: dropped, or to stderr when `verbose`."""
    import llama_cpp

    _LOG["verbose"] = verbose
    if _LOG["callback"] is None:
        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - C calls it
            if _LOG["verbose"] and text:
                try:
                    sys.stderr.write(text.decode("utf-8", "replace"))
                    sys.stderr.flush()
                except Exception:
                    pass

        _LOG["callback"] = _callback  # keep it alive as long as the process
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    # the bindings' Python logger (used by some of their own messages)
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


# ---------------------------------------------------------------------------------------
# Chat templates

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA4_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|header_start|>' + message['role'] + '<|header_end|>\n\n' + message['content'] | trim + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\n\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system.text = message['content'] %}"
    "{% elif message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' }}"
    "{% if system.text %}{{ '<<SYS>>\n' + system.text + '\n<</SYS>>\n\n' }}{% set system.text = '' %}{% endif %}"
    "{{ message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CHAT_FORMATS = {
    "llama3": LLAMA3_TEMPLATE,
    "llama-3": LLAMA3_TEMPLATE,
    "llama4": LLAMA4_TEMPLATE,
    "llama-4": LLAMA4_TEMPLATE,
    "llama2": LLAMA2_TEMPLATE,
    "llama-2": LLAMA2_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
}

# Tokens that end a turn whatever the vocabulary's EOG set says.
_STOP_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|eom|>", "<|end_of_text|>")


class ChatTemplate:
    """A chat template rendered in Jinja2's immutable sandbox, as transformers does.

    The date a template may stamp into the system prompt (`strftime_now`) is frozen when the
    template is made, so that the same conversation renders to the same bytes on every turn
    (a changed prefix would defeat KV cache reuse)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: str = "custom",
                 now: _dt.datetime | None = None):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._now = now or _dt.datetime.now()
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        import json

        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise LlamactlError(f"the chat template ({name}) is not valid Jinja: {exc}") from exc

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        def raise_exception(message: str) -> None:
            raise LlamactlError(f"the chat template refused the conversation: {message}")

        try:
            return self._template.render(
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=raise_exception,
                strftime_now=lambda fmt: self._now.strftime(fmt),
                date_string=self._now.strftime("%d %b %Y"),
                tools=None, functions=None, tool_choice=None, function_call=None,
            )
        except jinja2.TemplateError as exc:
            raise LlamactlError(f"the chat template ({self.name}) failed: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Memory / context fallback (used until, or when, offload.plan_for_model is not available)

_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
             "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}
_KV_GGML_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
                 "iq4_nl": 20, "bf16": 30}


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class ModelFacts:
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    architecture: str
    file_bytes: int


def probe_model(model_path: Path) -> ModelFacts:
    """Read a model's shape from its GGUF header (no weights loaded)."""
    from llamactl import gguf_info

    info = gguf_info.read_gguf(model_path)
    arch = info.architecture or "llama"
    meta = info.metadata

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, (list, tuple)):
            value = max(value) if value else default
        try:
            return int(value)
        except (TypeError, ValueError):
            return default

    n_embd = num("embedding_length", 4096)
    n_head = max(1, num("attention.head_count", 32))
    return ModelFacts(
        n_ctx_train=int(info.context_length or num("context_length", 4096)),
        n_layer=int(info.block_count or num("block_count", 32)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=max(1, num("attention.head_count_kv", n_head)),
        architecture=arch,
        file_bytes=_model_bytes(model_path),
    )


def _model_bytes(model_path: Path) -> int:
    import re

    path = Path(model_path)
    match = re.match(r"(.*)-00001-of-(\d{5})\.gguf$", path.name)
    if not match:
        return path.stat().st_size
    total = 0
    for i in range(1, int(match.group(2)) + 1):
        part = path.with_name(f"{match.group(1)}-{i:05d}-of-{match.group(2)}.gguf")
        if part.exists():
            total += part.stat().st_size
    return total


def fallback_context(facts: ModelFacts, options: EngineOptions, available: int | None = None) -> int:
    """The model's trained context, capped so that the KV cache and the attention scratch
    use at most a quarter of the memory left after the weights; never below 512 unless the
    model's own context is smaller."""
    available = _available_memory() if available is None else available
    head_dim = facts.n_embd // facts.n_head
    kv_per_token = 2 * facts.n_layer * facts.n_head_kv * head_dim * _KV_BYTES.get(options.kv_type, 2.0)
    scratch_per_token = 0 if options.flash_attn else options.n_ubatch * facts.n_head * 4
    budget = max(available - facts.file_bytes, 0) // 4
    fit = int(budget // max(kv_per_token + scratch_per_token, 1))
    fit = max(512, fit // 256 * 256)
    train = facts.n_ctx_train or 4096
    return min(train, fit)


@dataclass
class FallbackPlan:
    """What the engine uses when offload.plan_for_model is not available."""

    n_gpu_layers: int
    n_ctx: int
    cpu_tensor_patterns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"n_gpu_layers": self.n_gpu_layers, "n_ctx": self.n_ctx,
                "cpu_tensor_patterns": list(self.cpu_tensor_patterns),
                "warnings": list(self.warnings), "source": "engine fallback (no offload plan)"}


def make_plan(model_path: Path, options: EngineOptions):
    """The memory plan for loading `model_path` with `options`: offload.plan_for_model when
    it exists, else all layers on the GPU when the build can offload (0 otherwise) and the
    context from `fallback_context`. Explicit numbers in `options` win."""
    gpu_layers = None if options.gpu_layers in ("auto", None) else int(options.gpu_layers)
    try:
        from llamactl import offload  # noqa: F401
        plan_for_model = offload.plan_for_model
    except (ImportError, AttributeError):
        plan_for_model = None
    if plan_for_model is not None:
        return plan_for_model(model_path, ctx=options.n_ctx, kv_type=options.kv_type,
                              flash_attn=options.flash_attn, n_batch=options.n_batch,
                              n_ubatch=options.n_ubatch, gpu_layers=gpu_layers, cpu_moe=options.cpu_moe)
    import llama_cpp

    facts = probe_model(model_path)
    warnings = []
    if gpu_layers is None:
        gpu_layers = facts.n_layer + 1 if llama_cpp.llama_supports_gpu_offload() else 0
    if options.cpu_moe:
        warnings.append("--cpu-moe needs the memory planner (llamactl.offload), not available: ignored")
    n_ctx = options.n_ctx or fallback_context(facts, options)
    return FallbackPlan(n_gpu_layers=gpu_layers, n_ctx=n_ctx, warnings=warnings)


# ---------------------------------------------------------------------------------------
# The engine


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Engine:
    """A loaded model and its context. Not thread-safe; one conversation at a time."""

    llama: Any
    load_seconds: float
    plan: Any
    n_ctx: int

    def __init__(self, llama: Any, *, model_path: Path, options: EngineOptions, plan: Any,
                 load_seconds: float):
        import llama_cpp

        self.llama = llama
        self.model_path = Path(model_path)
        self.options = options
        self.plan = plan
        self.load_seconds = load_seconds
        self.n_ctx = int(llama.n_ctx())
        self.metadata: dict[str, str] = dict(getattr(llama, "metadata", {}) or {})
        self.architecture = self.metadata.get("general.architecture", "llama")
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._piece_cache: dict[int, bytes] = {}
        self._history: list[int] = []     # the last prompt + every token sampled after it
        # per history token: its text is its special form (template text, an end-of-turn
        # token) rather than the plain form an answer shows (special tokens as nothing)
        self._history_special: list[bool] = []
        self._built: tuple[list[int], list[bool]] | None = None   # chat_tokens' last result
        self.last_stats: Stats | None = None
        self.evaluated_total = 0          # tokens evaluated by this engine, for tests and bench
        self._stop_tokens = self._find_stop_tokens()
        self.template = self._make_template(options.chat_format)

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, model_path: Path, options: EngineOptions | None = None) -> "Engine":
        options = options or EngineOptions()
        model_path = Path(model_path)
        if not model_path.exists():
            raise NotFound(f"model file not found: {model_path}")
        if options.kv_type not in _KV_GGML_TYPE:
            raise UsageError(f"unknown KV cache type {options.kv_type!r}",
                             hint="one of: " + ", ".join(_KV_GGML_TYPE))
        if options.kv_type not in ("f16", "f32", "bf16") and not options.flash_attn:
            raise UsageError("a quantized V cache needs flash attention", hint="add --flash-attn")
        started = time.perf_counter()
        set_llama_log(options.verbose)
        plan = make_plan(model_path, options)
        n_ctx = int(options.n_ctx or plan.n_ctx)
        kwargs: dict[str, Any] = dict(
            n_gpu_layers=int(plan.n_gpu_layers), n_ctx=n_ctx, n_batch=min(options.n_batch, n_ctx),
            n_ubatch=min(options.n_ubatch, options.n_batch, n_ctx), flash_attn=options.flash_attn,
            verbose=options.verbose,
        )
        if options.threads:
            kwargs["n_threads"] = options.threads
            kwargs["n_threads_batch"] = options.threads
        if options.seed is not None:
            kwargs["seed"] = options.seed
        if options.kv_type != "f16":
            kwargs["type_k"] = _KV_GGML_TYPE[options.kv_type]
            kwargs["type_v"] = _KV_GGML_TYPE[options.kv_type]
        # Llama 4's chunked attention keeps a sliding-window-like cache; llama.cpp can remove
        # a suffix of it (and so reuse a conversation's prefix) only with the full-size cache.
        facts_arch = _read_arch(model_path)
        if facts_arch == "llama4":
            kwargs["swa_full"] = True
        try:
            patterns = list(getattr(plan, "cpu_tensor_patterns", []) or [])
            if patterns:
                from llamactl.overrides import load_llama

                llama = load_llama(str(model_path), patterns, **kwargs)
            else:
                import llama_cpp

                llama = llama_cpp.Llama(str(model_path), **kwargs)
        except ValueError as exc:
            text = str(exc)
            if "context" in text.lower():
                raise InsufficientResources(
                    f"llama.cpp could not create a context of {n_ctx} tokens: {text}",
                    hint="try a smaller --ctx, fewer --gpu-layers, or run with --verbose") from exc
            raise IntegrityError(f"llama.cpp could not load {model_path}: {text}",
                                 hint="run with --verbose for llama.cpp's log") from exc
        engine = cls(llama, model_path=model_path, options=options, plan=plan,
                     load_seconds=time.perf_counter() - started)
        return engine

    def _find_stop_tokens(self) -> set[int]:
        stops: set[int] = set()
        for text in _STOP_TEXTS:
            ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1 and self.piece(ids[0], special=True) == text.encode():
                stops.add(ids[0])
        eos = self.llama.token_eos()
        if eos is not None and eos >= 0:
            stops.add(eos)
        return stops

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "replace")

    def _make_template(self, chat_format: str | None) -> ChatTemplate:
        bos = self._token_text(self.llama.token_bos())
        eos = self._token_text(self.llama.token_eos())
        if chat_format:
            if chat_format in CHAT_FORMATS:
                return ChatTemplate(CHAT_FORMATS[chat_format], bos_token=bos, eos_token=eos, name=chat_format)
            path = Path(chat_format).expanduser()
            if path.is_file():
                try:
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise UsageError(f"cannot read chat template {path}: {exc}") from exc
                return ChatTemplate(source, bos_token=bos, eos_token=eos, name=str(path))
            raise UsageError(f"unknown chat format {chat_format!r}",
                             hint="one of: " + ", ".join(sorted(CHAT_FORMATS)) + ", or a .jinja file")
        source = self.metadata.get("tokenizer.chat_template")
        if source:
            return ChatTemplate(source, bos_token=bos, eos_token=eos, name="gguf")
        if self.architecture == "llama4":
            name = "llama4"
        elif self._single_token("<|start_header_id|>"):
            name = "llama3"
        else:
            name = "plain"
        return ChatTemplate(CHAT_FORMATS[name], bos_token=bos, eos_token=eos, name=name)

    def _single_token(self, text: str) -> bool:
        ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
        return len(ids) == 1

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens as their text when `special`)."""
        key = token if not special else -token - 1
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                break
            size = -n
        out = buf.raw[:n]
        self._piece_cache[key] = out
        return out

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", "replace")

    def is_stop(self, token: int) -> bool:
        import llama_cpp

        return token in self._stop_tokens or bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @property
    def context_tokens(self) -> list[int]:
        """The tokens now held in the KV cache."""
        return [int(t) for t in self.llama.input_ids[: self.llama.n_tokens]]

    @property
    def context_used(self) -> int:
        return max(len(self._history), int(self.llama.n_tokens))

    # -- chat -----------------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """The prompt tokens for `messages`, built so that the conversation already in the
        cache is kept token for token: the rendered prompt is compared, byte by byte, with
        the text of the tokens of the last call (its prompt and the answer generated); the
        tokens inside the common text are reused as they are, and only the rest of the text
        is tokenized. Whitespace that the template trimmed from an answer (Llama 3's
        templates render `content | trim`) is skipped on the cached side, so the model's
        own answer tokens stay as generated, as llama.cpp's llama-cli keeps them; a special
        token inside an answer counts as the nothing the answer's text shows for it."""
        text = self.render(messages)
        history = self._history
        flags = self._history_special
        if history:
            # Compare as text, decoding the cached tokens the way answers are decoded (bytes
            # that are not UTF-8 become U+FFFD, as in the answer the conversation stores).
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            pos = 0           # position in `text`
            keep = 0          # history tokens kept
            keep_pos = 0
            for i, tok in enumerate(history):
                chunk = decoder.decode(self.piece(tok, special=flags[i] if i < len(flags) else True))
                k = 0
                while k < len(chunk):
                    if pos < len(text) and chunk[k] == text[pos]:
                        k += 1
                        pos += 1
                    elif chunk[k].isspace():
                        k += 1
                    else:
                        break
                if k < len(chunk):
                    break
                if not decoder.getstate()[0]:   # no character cut in half here
                    keep, keep_pos = i + 1, pos
            if keep > 0:
                rest = self.tokenize(text[keep_pos:]) if keep_pos < len(text) else []
                tokens = list(history[:keep]) + rest
                self._built = (tokens, list(flags[:keep]) + [True] * len(rest))
                return list(tokens)
        text_bytes = text.encode("utf-8")
        add_bos = self._add_bos() and not self._starts_with_bos(text_bytes)
        tokens = self.tokenize(text, add_bos=add_bos)
        self._built = (tokens, [True] * len(tokens))
        return list(tokens)

    def _add_bos(self) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def _starts_with_bos(self, text: bytes) -> bool:
        bos = self.llama.token_bos()
        return bos is not None and bos >= 0 and text.startswith(self.piece(bos, special=True))

    def count_chat_tokens(self, messages: list[dict]) -> int:
        text = self.render(messages)
        add_bos = self._add_bos() and not self._starts_with_bos(text.encode("utf-8"))
        return len(self.tokenize(text, add_bos=add_bos))

    def stream_chat(self, messages: list[dict], sampling: Sampling) -> Iterator[Piece | Stats]:
        """Render `messages` with the chat template and generate the assistant's answer."""
        tokens = self.chat_tokens(messages)
        yield from self.stream_tokens(tokens, sampling)

    # -- the one decode path ---------------------------------------------------------------

    def _make_sampler(self, sampling: Sampling):
        import llama_cpp
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        seed = sampling.seed if sampling.seed is not None else self.options.seed
        seed = llama_cpp.LLAMA_DEFAULT_SEED if seed is None else int(seed) & 0xFFFFFFFF
        if sampling.repeat_penalty and sampling.repeat_penalty != 1.0:
            sampler.add_penalties(n_vocab=self.llama.n_vocab(), penalty_last_n=64,
                                  penalty_repeat=sampling.repeat_penalty,
                                  penalty_freq=0.0, penalty_present=0.0)
        if sampling.temperature <= 0:
            sampler.add_greedy()
        else:
            if sampling.top_k and sampling.top_k > 0:
                sampler.add_top_k(int(sampling.top_k))
            if sampling.top_p is not None and sampling.top_p < 1.0:
                sampler.add_top_p(float(sampling.top_p), 1)
            if sampling.min_p and sampling.min_p > 0:
                sampler.add_min_p(float(sampling.min_p), 1)
            sampler.add_temp(float(sampling.temperature))
            sampler.add_dist(seed)
        return sampler

    def _truncate_cache(self, keep: int) -> int:
        """Keep the first `keep` tokens of the KV cache; return how many were kept."""
        llama = self.llama
        if keep < llama.n_tokens:
            if keep == 0 or not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
                llama._ctx.kv_cache_clear()
                keep = 0
        llama.n_tokens = min(keep, llama.n_tokens)
        return llama.n_tokens

    def reset(self) -> None:
        """Forget the KV cache and the conversation tokens."""
        self._truncate_cache(0)
        self._history = []
        self._history_special = []

    def stream_tokens(self, prompt_tokens: list[int], sampling: Sampling, *,
                      ignore_eos: bool = False, reuse_cache: bool = True) -> Iterator[Piece | Stats]:
        """Evaluate what of `prompt_tokens` is not already in the KV cache, then sample up
        to `sampling.max_tokens` tokens (0: evaluate the prompt only). Yields a Piece per
        generated token and, last, a Stats. Ctrl-C (KeyboardInterrupt) while this runs
        ends it with finish_reason "interrupted"; `last_stats` always holds the last call's
        statistics, even when the caller stopped iterating."""
        llama = self.llama
        prompt = [int(t) for t in prompt_tokens]
        n_ctx = self.n_ctx
        if not prompt:
            raise UsageError("empty prompt")
        if len(prompt) >= n_ctx:
            raise LlamactlError(f"the prompt is {len(prompt)} tokens; the context window is {n_ctx} tokens",
                                hint="use a larger --ctx, or a shorter input")
        start = time.perf_counter()
        state = {"evaluated": 0, "generated": 0, "t_prompt": None, "t_first": None, "reason": "stop"}
        self._history = list(prompt)
        if self._built is not None and self._built[0] == prompt:
            self._history_special = list(self._built[1])
        else:
            self._history_special = [True] * len(prompt)
        self._built = None

        def finish() -> Stats:
            end = time.perf_counter()
            t_prompt = (state["t_prompt"] or end) - start
            gen_seconds = end - (state["t_prompt"] or end)
            ttft = (state["t_first"] - start) if state["t_first"] else t_prompt
            stats = Stats(
                prompt_tokens=len(prompt), prompt_tokens_evaluated=state["evaluated"],
                completion_tokens=state["generated"], prompt_seconds=t_prompt,
                generation_seconds=gen_seconds, ttft_seconds=ttft,
                prompt_tps=state["evaluated"] / t_prompt if t_prompt > 0 else 0.0,
                generation_tps=state["generated"] / gen_seconds if gen_seconds > 0 and state["generated"] else 0.0,
                finish_reason=state["reason"], context_tokens=len(self._history),
            )
            self.last_stats = stats
            return stats

        completed = False
        try:
            # 1. the prompt: keep the common prefix, evaluate the rest (at least one token,
            #    so that the logits are those of the prompt's last token)
            if not reuse_cache:
                self._truncate_cache(0)
            cached = self.context_tokens
            keep = min(_lcp(cached, prompt), len(prompt) - 1)
            keep = self._truncate_cache(keep)
            todo = prompt[keep:]
            step = max(1, int(llama.n_batch))
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                llama.eval(chunk)
                state["evaluated"] += len(chunk)
                self.evaluated_total += len(chunk)
            state["t_prompt"] = time.perf_counter()

            # 2. generation
            limit = sampling.max_tokens
            if limit == 0:
                state["reason"] = "length"
            else:
                sampler = self._make_sampler(sampling)
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                while True:
                    token = int(sampler.sample(llama._ctx, -1))
                    if not ignore_eos and self.is_stop(token):
                        self._history.append(token)
                        self._history_special.append(True)
                        state["reason"] = "stop"
                        break
                    state["generated"] += 1
                    self._history.append(token)
                    self._history_special.append(False)
                    if state["t_first"] is None:
                        state["t_first"] = time.perf_counter()
                    yield Piece(decoder.decode(self.piece(token)), token)
                    if limit is not None and state["generated"] >= limit:
                        state["reason"] = "length"
                        break
                    if llama.n_tokens + 1 >= n_ctx:
                        state["reason"] = "length"
                        break
                    llama.eval([token])
                    self.evaluated_total += 1
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield Piece(tail, -1)
            completed = True
        except KeyboardInterrupt:
            state["reason"] = "interrupted"
            completed = True
        finally:
            stats = finish()
            if not completed:
                stats.finish_reason = "interrupted"
        yield stats

    def close(self) -> None:
        llama = getattr(self, "llama", None)
        if llama is not None:
            try:
                llama.close()
            except Exception:
                pass
            self.llama = None


def _read_arch(model_path: Path) -> str | None:
    """general.architecture from the GGUF header (cheap: the first key-value pairs)."""
    try:
        from llamactl import gguf_info

        return gguf_info.read_gguf(model_path).architecture
    except Exception:
        return None
