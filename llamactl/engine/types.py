"""The engine's data: what a load asks for beyond the load specification, sampling
settings, and what a generation yields (a `Piece` per token, a `Stats` last)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from llamactl.load import LoadSpec


@dataclass
class EngineOptions:
    load: LoadSpec = field(default_factory=LoadSpec)   # context, layers, KV cache, batches, threads
    seed: int | None = None
    verbose: bool = False             # llama.cpp's log on stderr
    chat_format: str | None = None    # a built-in name (see CHAT_FORMATS) or a .jinja file
    mmproj: Path | None = None        # a Llama 4 vision projector to load with the model


@dataclass
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None     # None: until end of turn or a full context; 0: prompt only
    grammar: str | None = None        # GBNF the output must follow (root rule "root")

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
    prompt_image_tokens: int = 0      # of prompt_tokens, image positions (embeddings, not tokens)
    draft_tokens: int = 0             # tokens a draft model proposed (speculative decoding)
    draft_accepted_tokens: int = 0    # of which the target accepted

    @property
    def draft_acceptance(self) -> float | None:
        """draft_accepted_tokens / draft_tokens; None when nothing was drafted."""
        return self.draft_accepted_tokens / self.draft_tokens if self.draft_tokens else None

    def to_dict(self) -> dict:
        return asdict(self)
