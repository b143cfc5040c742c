"""The engine: a loaded model and its context, and the one decode path.

`Engine.stream_tokens` is used by chat, one-shot mode and bench: it evaluates the part of
the prompt that is not already in the KV cache (the longest common token prefix with what
was evaluated before is kept), then samples token by token and yields a `Piece` per token
and, last, a `Stats`. `Engine.stream_chat` renders messages with the chat template and
builds the prompt tokens so that the conversation so far is reused token for token.

`Engine.load` is the one place that constructs `llama_cpp.Llama`: the memory plan
(llamactl.offload) for the load specification decides the layers on the GPU, the experts
kept in RAM and the context. What it needs below the bindings' public API goes through
`llamactl.engine.bindings`."""

from __future__ import annotations

import codecs
import ctypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from llamactl.engine import bindings
from llamactl.engine.images import IMAGE_PLACE, eval_prompt, is_image_token, split_markers
from llamactl.engine.template import CHAT_FORMATS, ChatTemplate, builtin
from llamactl.engine.types import EngineOptions, Piece, Sampling, Stats
from llamactl.errors import InsufficientResources, IntegrityError, LlamactlError, NotFound, UsageError

if TYPE_CHECKING:
    from llamactl.engine.images import ImageTokens
    from llamactl.engine.speculate import Draft
    from llamactl.offload import Plan

# Tokens that end a turn whatever the vocabulary's EOG set says.
_STOP_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|eom|>", "<|end_of_text|>")


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
    plan: Plan
    n_ctx: int

    def __init__(self, llama: Any, *, model_path: Path, options: EngineOptions, plan: Plan,
                 load_seconds: float):
        import llama_cpp

        self.llama = llama
        self.model_path = Path(model_path)
        self.options = options
        self.plan = plan
        self.load_seconds = load_seconds
        self.n_ctx = int(llama.n_ctx())
        self.metadata: dict[str, str] = dict(llama.gguf_metadata)
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
        self.images: ImageTokens | None = None   # a vision projector (attach_projector)
        self.draft: Draft | None = None          # a draft model (attach_draft)
        self._stop_tokens = self._find_stop_tokens()
        self._bad_utf8: list[int] | None = None
        self.template = self._make_template(options.chat_format)

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, model_path: Path, options: EngineOptions | None = None, *,
             plan: Plan | None = None) -> "Engine":
        """Plan and load `model_path` as `options.load` says (see llamactl.load); `plan`:
        a plan already made for it (a target and its draft are planned together:
        llamactl.draft.plan_with_draft)."""
        from llamactl import offload

        options = options or EngineOptions()
        spec = options.load
        model_path = Path(model_path)
        if not model_path.exists():
            raise NotFound(f"model file not found: {model_path}")
        bindings.check()
        started = time.perf_counter()
        bindings.set_llama_log(options.verbose)
        if plan is None:
            plan = offload.plan_for_model(model_path, spec, mmproj=options.mmproj)
        n_ctx = int(spec.ctx or plan.n_ctx)
        kwargs: dict[str, Any] = dict(
            n_gpu_layers=int(plan.n_gpu_layers), n_ctx=n_ctx, n_batch=min(spec.n_batch, n_ctx),
            n_ubatch=min(spec.n_ubatch, n_ctx), flash_attn=plan.flash_attn, verbose=options.verbose,
        )
        if spec.threads:
            kwargs["n_threads"] = spec.threads
            kwargs["n_threads_batch"] = spec.threads
        if options.seed is not None:
            kwargs["seed"] = options.seed
        if spec.kv_type != "f16":
            kwargs["type_k"] = spec.kv.ggml_type
            kwargs["type_v"] = spec.kv.ggml_type
        # Llama 4's chunked-attention layers: the full-size cache (swa_full) or the chunked
        # one, a window that `_truncate_cache` knows the limits of (the plan chose).
        if plan.architecture == "llama4":
            kwargs["swa_full"] = plan.kv_cache != "chunked"
        try:
            if plan.cpu_tensor_patterns:
                from llamactl.overrides import load_llama

                llama = load_llama(str(model_path), list(plan.cpu_tensor_patterns), **kwargs)
            else:
                llama = bindings.llama_class()(str(model_path), **kwargs)
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
        if options.mmproj is not None:
            try:
                engine.attach_projector(options.mmproj)
            except BaseException:
                engine.close()
                raise
            engine.load_seconds = time.perf_counter() - started
        return engine

    @classmethod
    def load_with_draft(cls, model_path: Path, options: EngineOptions, draft_path: Path, *,
                        draft_max: int | None = None, target_name: str | None = None,
                        draft_name: str | None = None) -> "Engine":
        """Plan the model and its draft together (llamactl.draft.plan_with_draft), load
        both and attach the draft: what chat, bench and serve call for --draft."""
        from llamactl.draft import plan_with_draft

        plans = plan_with_draft(model_path, draft_path, options.load, mmproj=options.mmproj,
                                target_name=target_name, draft_name=draft_name)
        engine = cls.load(model_path, options, plan=plans.target)
        try:
            engine.load_draft(draft_path, draft_max, name=draft_name or Path(draft_path).name,
                              plan=plans.draft, target_name=target_name)
        except BaseException:
            engine.close()
            raise
        return engine

    def attach_projector(self, path: Path) -> None:
        """Load a Llama 4 vision projector (mmproj GGUF) for this model: images can then be
        placed in messages (`"images": [ImageFile, ...]` beside the content)."""
        from llamactl.engine.images import ImageTokens, Projector, ProjectorInfo

        if self.architecture != "llama4":
            raise UsageError(f"{self.model_path.name} is a {self.architecture} model; llamactl reads images "
                             "with Llama 4 models only")
        info = ProjectorInfo.read(path)
        projector = Projector(info, self.llama, n_threads=self.options.load.threads,
                              use_gpu=self.plan.n_gpu_layers > 0)
        self.images = ImageTokens(projector, self._special_id)

    def attach_draft(self, draft: "Engine", draft_max: int | None = None, *,
                     name: str | None = None, target_name: str | None = None) -> None:
        """Use `draft` (a loaded Engine with this model's vocabulary: else UsageError naming
        both) for speculative decoding in `stream_tokens`; `draft_max` tokens proposed per
        round, or None: an adaptive length starting at llamactl.draft.DEFAULT_DRAFT_MAX.
        The draft is closed with this engine."""
        from llamactl.engine.speculate import attach

        if self.draft is not None:
            self.draft.close()
            self.draft = None
        self.draft = attach(self, draft, draft_max=draft_max, draft_name=name, target_name=target_name)

    def load_draft(self, path: Path, draft_max: int | None = None, *, name: str | None = None,
                   plan: Plan | None = None, target_name: str | None = None) -> None:
        """Load the draft model at `path` with this engine's load options at this engine's
        context (`plan`: one made for it) and attach it. A draft that fails to load raises
        an error whose message names it."""
        name = name or Path(path).name
        draft = self.load_draft_engine(path, name=name, plan=plan, target_name=target_name)
        try:
            self.attach_draft(draft, draft_max, name=name, target_name=target_name)
        except BaseException:
            draft.close()
            raise

    def load_draft_engine(self, path: Path, options: EngineOptions | None = None, *, name: str | None = None,
                          plan: Plan | None = None, target_name: str | None = None) -> "Engine":
        """The draft model at `path` loaded (`options`: else this engine's at this engine's
        context) and checked against this model's vocabulary (UsageError naming both), not
        attached: the server's batched slots use it so. A draft that fails to load raises
        an error whose message names it."""
        from llamactl.engine.speculate import check_vocabulary, options_for_draft

        name = name or Path(path).name
        try:
            draft = Engine.load(Path(path), options or options_for_draft(self.options, self.n_ctx), plan=plan)
        except LlamactlError as exc:
            raise type(exc)(f"the draft model {name} could not be loaded: {exc.message}", hint=exc.hint) from exc
        try:
            check_vocabulary(self, draft, target_name=target_name or self.model_path.name, draft_name=name)
        except BaseException:
            draft.close()
            raise
        return draft

    def _special_id(self, text: str) -> int:
        ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise UsageError(f"the model's vocabulary has no {text} token: it is not a Llama 4 vision model",
                             hint="images need a Llama 4 model (Scout, Maverick) and its projector")
        return int(ids[0])

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
                return builtin(chat_format, bos_token=bos, eos_token=eos)
            path = Path(chat_format).expanduser()
            if path.is_file():
                try:
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise UsageError(f"cannot read chat template {path}: {exc}") from exc
                return ChatTemplate(source, bos_token=bos, eos_token=eos, name=str(path),
                                    origin=f"the chat template {path}")
            raise UsageError(f"unknown chat format {chat_format!r}",
                             hint="one of: " + ", ".join(sorted(CHAT_FORMATS)) + ", or a .jinja file")
        source = self.metadata.get("tokenizer.chat_template")
        if source:
            return ChatTemplate(source, bos_token=bos, eos_token=eos, name="gguf",
                                origin=f"the chat template in {self.model_path}")
        if self.architecture == "llama4":
            name = "llama4"
        elif self._single_token("<|start_header_id|>"):
            name = "llama3"
        else:
            name = "plain"
        return builtin(name, bos_token=bos, eos_token=eos)

    def _single_token(self, text: str) -> bool:
        ids = self.llama.tokenize(text.encode(), add_bos=False, special=True)
        return len(ids) == 1

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens as their text when `special`; a whole
        image as its marker text)."""
        if token < 0:
            return self.images.marker(token).encode() if self.images is not None and is_image_token(token) else b""
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

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        """The prompt text. A message with `"images"` is rendered with image parts before
        its text, as Llama 4's template expects them; each `<|image|>` the template writes
        becomes that image's marker (a whole image, expanded when evaluated)."""
        images = [img for m in messages for img in (m.get("images") or [])]
        if not images:
            return self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        if self.images is None:
            raise UsageError("this conversation holds an image, but the model has no vision projector",
                             hint="give the projector with --mmproj FILE")
        parts = []
        for m in messages:
            if m.get("images"):
                m = dict(m, content=[{"type": "image"} for _ in m["images"]]
                         + [{"type": "text", "text": m["content"]}])
            parts.append(m)
        text = self.template.render(parts, add_generation_prompt=add_generation_prompt, tools=tools)
        pieces = text.split(IMAGE_PLACE)
        if len(pieces) != len(images) + 1:
            raise UsageError(f"the chat template placed {len(pieces) - 1} image(s) for {len(images)} given",
                             hint="use the model's own template, or --chat-format llama4; "
                                  f"a message must not contain {IMAGE_PLACE} as text")
        out = [pieces[0]]
        for img, piece in zip(images, pieces[1:]):
            out += [self.images.marker(self.images.virtual(img)), piece]
        return "".join(out)

    def _tokenize_prompt(self, text: str, add_bos: bool = False) -> list[int]:
        """Tokens of rendered text; image markers become their virtual image ids."""
        if self.images is None or "\ue000" not in text:
            return self.tokenize(text, add_bos=add_bos)
        tokens: list[int] = []
        for i, piece in enumerate(split_markers(text)):
            if isinstance(piece, int):
                tokens.append(piece)
            else:
                tokens += self.tokenize(piece, add_bos=add_bos and i == 0)
        return tokens

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """The prompt tokens for `messages`, built so that the conversation already in the
        cache is kept token for token: the rendered prompt is compared, byte by byte, with
        the text of the tokens of the last call (its prompt and the answer generated); the
        tokens inside the common text are reused as they are, and only the rest of the text
        is tokenized. Whitespace that the template trimmed from an answer (Llama 3's
        templates render `content | trim`) is skipped on the cached side, so the model's
        own answer tokens stay as generated, as llama.cpp's llama-cli keeps them; a special
        token inside an answer counts as the nothing the answer's text shows for it."""
        tokens, flags = self.build_prompt_tokens(self.render(messages), self._history, self._history_special)
        self._built = (tokens, flags)
        return list(tokens)

    def build_prompt_tokens(self, text: str, history: list[int],
                            flags: list[bool]) -> tuple[list[int], list[bool]]:
        """The tokens of the rendered prompt `text`, keeping the tokens of `history` (a
        previous prompt and the answer sampled after it; `flags`: which of them are shown
        in their special form) inside the common text, as `chat_tokens` describes. Returns
        the tokens and their flags; touches no state (the server calls it per slot)."""
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
                rest = self._tokenize_prompt(text[keep_pos:]) if keep_pos < len(text) else []
                tokens = list(history[:keep]) + rest
                return tokens, list(flags[:keep]) + [True] * len(rest)
        text_bytes = text.encode("utf-8")
        add_bos = self._add_bos() and not self._starts_with_bos(text_bytes)
        tokens = self._tokenize_prompt(text, add_bos=add_bos)
        return tokens, [True] * len(tokens)

    def _add_bos(self) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def _starts_with_bos(self, text: bytes) -> bool:
        bos = self.llama.token_bos()
        return bos is not None and bos >= 0 and text.startswith(self.piece(bos, special=True))

    def count_chat_tokens(self, messages: list[dict]) -> int:
        """The prompt's length in evaluated tokens (an image counts its whole layout)."""
        text = self.render(messages)
        add_bos = self._add_bos() and not self._starts_with_bos(text.encode("utf-8"))
        tokens = self._tokenize_prompt(text, add_bos=add_bos)
        if self.images is None:
            return len(tokens)
        return sum(self.images.count(self.images.image_of(t))[0] if is_image_token(t) else 1 for t in tokens)

    def stream_chat(self, messages: list[dict], sampling: Sampling) -> Iterator[Piece | Stats]:
        """Render `messages` with the chat template and generate the assistant's answer."""
        tokens = self.chat_tokens(messages)
        yield from self.stream_tokens(tokens, sampling)

    # -- the one decode path ---------------------------------------------------------------

    def sampler(self, sampling: Sampling) -> Any:
        """The sampler chain for `sampling` (its grammar included), for this model."""
        return bindings.sampler_chain(
            sampling, n_vocab=int(self.llama.n_vocab()),
            seed=sampling.seed if sampling.seed is not None else self.options.seed,
            vocab=self._vocab, banned=self._non_utf8_tokens() if sampling.grammar else ())

    def _non_utf8_tokens(self) -> list[int]:
        """Tokens holding a byte that never occurs in UTF-8 (C0, C1, F5-FF), computed once.
        llama.cpp's grammar reads F5-FF as the first byte of a character, so a byte-level
        model could otherwise put text that is not UTF-8 into a string the grammar counts as
        valid: under a grammar these tokens are never sampled."""
        if self._bad_utf8 is None:
            bad = set(b"\xc0\xc1" + bytes(range(0xF5, 0x100)))
            self._bad_utf8 = [t for t in range(int(self.llama.n_vocab()))
                              if not bad.isdisjoint(self.piece(t))]
        return self._bad_utf8

    def _truncate_cache(self, keep: int) -> int:
        """Keep the first `keep` tokens of the KV cache; return how many were kept. With
        Llama 4's chunked cache, fewer when the window no longer holds what the next token
        needs (see bindings.truncate_cache)."""
        from llamactl.offload import LLAMA4_CHUNK

        chunk = LLAMA4_CHUNK if self.plan.kv_cache == "chunked" and self.architecture == "llama4" else 0
        return bindings.truncate_cache(self.llama, keep, chunk=chunk)

    def reset(self) -> None:
        """Forget the KV cache and the conversation tokens (the draft's cache too)."""
        self._truncate_cache(0)
        if self.draft is not None:
            self.draft.engine.reset()
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
        # a whole image (a virtual id) is evaluated as its layout of tokens and image positions
        full, n_image = self.images.expand(prompt) if self.images is not None else (prompt, 0)
        if any(is_image_token(t) for t in full):
            raise UsageError("this prompt holds an image but the model has no vision projector")
        if len(full) >= n_ctx:
            raise LlamactlError(f"the prompt is {len(full)} tokens; the context window is {n_ctx} tokens",
                                hint="use a larger --ctx, or a shorter input")
        start = time.perf_counter()
        state = {"evaluated": 0, "generated": 0, "t_prompt": None, "t_first": None, "reason": "stop"}
        spec: Any = None           # a Speculator while a draft drafts for this call
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
                prompt_tokens=len(full), prompt_tokens_evaluated=state["evaluated"],
                completion_tokens=state["generated"], prompt_seconds=t_prompt,
                generation_seconds=gen_seconds, ttft_seconds=ttft,
                prompt_tps=state["evaluated"] / t_prompt if t_prompt > 0 else 0.0,
                generation_tps=state["generated"] / gen_seconds if gen_seconds > 0 and state["generated"] else 0.0,
                finish_reason=state["reason"], context_tokens=len(self._history) + len(full) - len(prompt),
                prompt_image_tokens=n_image,
                draft_tokens=spec.proposed if spec is not None else 0,
                draft_accepted_tokens=spec.accepted if spec is not None else 0,
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
            keep = min(_lcp(cached, full), len(full) - 1)
            keep = self._truncate_cache(keep)
            todo = full[keep:]
            step = max(1, int(llama.n_batch))
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                if n_image:
                    eval_prompt(llama, chunk, self.images)   # tokens and image embeddings
                else:
                    llama.eval(chunk)
                state["evaluated"] += len(chunk)
                self.evaluated_total += len(chunk)
            state["t_prompt"] = time.perf_counter()

            # 2. generation
            limit = sampling.max_tokens
            if limit == 0:
                state["reason"] = "length"
            else:
                from llamactl.engine import speculate

                if speculate.usable(self, sampling, n_image):
                    spec = speculate.Speculator(
                        self, self.draft, sampling,
                        sampling.seed if sampling.seed is not None else self.options.seed)
                    sampler = None
                else:
                    sampler = self.sampler(sampling)
                pending: list[int] = []
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                while True:
                    if spec is None:
                        token = bindings.sample(sampler, llama)
                    else:
                        if not pending:
                            room = n_ctx - len(full) - state["generated"]
                            if limit is not None:
                                room = min(room, limit - state["generated"])
                            pending = spec.round(self._history, room) if state["generated"] else [spec.first()]
                        token = pending.pop(0)
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
                    if spec is not None:
                        if len(full) + state["generated"] >= n_ctx:   # as below, without a draft
                            state["reason"] = "length"
                            break
                        continue
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
            if spec is not None:
                spec.settle(self._history)
            stats = finish()
            if not completed:
                stats.finish_reason = "interrupted"
        yield stats

    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()
            self.draft = None
        if self.images is not None:          # mtmd's context first: it refers to the model
            self.images.projector.close()
            self.images = None
        llama = self.llama
        if llama is not None:
            try:
                llama.close()
            except Exception:
                pass
            self.llama = None

