"""One-shot mode for shell pipes: one user message in, only the answer out.

stdout gets the answer and nothing else, ending in exactly one newline (leading and
trailing whitespace of the answer are dropped, the rest streams as it is generated), or
one JSON document with --json. Notices go to stderr."""

from __future__ import annotations

from typing import IO

from llamactl.chat.conversation import Conversation, answer_reserve, fit_to_context
from llamactl.cli import output
from llamactl.engine import Engine, Piece, Sampling, Stats
from llamactl.errors import UsageError


def read_input(prompt_args: list[str] | None, stdin: IO[str] | None) -> str:
    """The user message: piped stdin first, then the prompt arguments. Empty: exit 2."""
    parts = []
    if stdin is not None:
        try:
            data = stdin.read()
        except UnicodeDecodeError as exc:
            raise UsageError(f"standard input is not UTF-8 text: {exc}") from exc
        if data.strip():
            parts.append(data.strip("\n"))
    if prompt_args:
        text = " ".join(prompt_args)
        if text.strip():
            parts.append(text)
    message = "\n\n".join(parts)
    if not message.strip():
        raise UsageError("empty input: nothing to send to the model",
                         hint='give a prompt (llamactl chat MODEL "question") or pipe text into it')
    return message


class _Writer:
    """Streams the answer to stdout without its leading and trailing whitespace."""

    def __init__(self):
        self.started = False
        self.pending = ""

    def write(self, text: str) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        text = self.pending + text
        body = text.rstrip()
        self.pending = text[len(body):]
        if body:
            output.stream(body)

    def end(self) -> None:
        output.stream("\n")


def run_oneshot(engine: Engine, conv: Conversation, message: str, sampling: Sampling, *,
                model_name: str, json_out: bool = False, notice=None, images: list | None = None) -> dict:
    """Answer `message` (with `images`, llamactl.images.ImageFile) after the conversation
    `conv`; stream the answer to stdout (or print one JSON document). Returns the result
    document."""
    conv.add("user", message, images)
    trim = fit_to_context(conv, engine.count_chat_tokens, engine.n_ctx,
                          answer_reserve(engine.n_ctx, sampling.max_tokens))
    if trim.dropped_turns and notice is not None:
        notice(trim.notice(engine.n_ctx))
    writer = None if json_out else _Writer()
    parts: list[str] = []
    stats: Stats | None = None
    try:
        for item in engine.stream_chat(conv.as_messages(), sampling):
            if isinstance(item, Piece):
                parts.append(item.text)
                if writer is not None:
                    writer.write(item.text)
            else:
                stats = item
    except KeyboardInterrupt:
        # Ctrl-C landed here rather than inside the engine (e.g. while writing a piece):
        # end the line all the same, then exit 130
        if writer is not None:
            writer.end()
        raise
    if stats is None:  # pragma: no cover - stream_chat always ends with Stats
        stats = engine.last_stats
    if stats.finish_reason == "interrupted":
        # Ctrl-C (the engine ended the answer early): end the line, then exit 130
        if writer is not None:
            writer.end()
        raise KeyboardInterrupt
    content = "".join(parts).strip()
    conv.add("assistant", content)
    doc = {
        "model": model_name,
        "content": content,
        "finish_reason": stats.finish_reason,
        "usage": {
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            "prompt_tokens_evaluated": stats.prompt_tokens_evaluated,
            "image_tokens": stats.prompt_image_tokens,
            "draft_tokens": stats.draft_tokens,
            "draft_accepted_tokens": stats.draft_accepted_tokens,
        },
        "timings": {
            "ttft_seconds": round(stats.ttft_seconds, 6),
            "prompt_seconds": round(stats.prompt_seconds, 6),
            "generation_seconds": round(stats.generation_seconds, 6),
            "prompt_tokens_per_second": round(stats.prompt_tps, 3),
            "generation_tokens_per_second": round(stats.generation_tps, 3),
            "load_seconds": round(engine.load_seconds, 6),
        },
    }
    if writer is not None:
        writer.end()
    else:
        output.json_doc(doc)
    return doc
