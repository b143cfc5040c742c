"""The interactive REPL (stdin is a terminal), on prompt_toolkit.

Enter sends; a line ending in `\\`, a block between `\"\"\"` lines, or Esc-Enter continue on a
new line. Slash commands (completed with Tab) manage the conversation. Answers stream to
stdout; after each one a dim statistics line goes to stderr. Ctrl-C while the model is
generating stops that answer (the partial answer stays in the conversation); Ctrl-C at the
prompt clears the line; Ctrl-D (or /exit) ends the session with exit 0."""

from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

from llamactl.chat.conversation import (Conversation, ContextOverflow, answer_reserve,
                                        fit_to_context)
from llamactl.cli import output
from llamactl.engine import Engine, Piece, Sampling, Stats
from llamactl.errors import LlamactlError

COMMANDS = {
    "/help": "show this help",
    "/exit": "end the session (also Ctrl-D)",
    "/clear": "forget the conversation (the system prompt stays)",
    "/system": "/system TEXT sets the system prompt; /system alone shows it",
    "/set": "/set KEY VALUE changes a sampling option; /set alone lists them",
    "/save": "/save FILE writes the conversation as JSON",
    "/load": "/load FILE replaces the conversation with a saved one",
    "/stats": "context used and the last answer's speed",
    "/retry": "generate the last answer again",
    "/image": "/image PATH attaches an image to your next message (Llama 4 with a projector)",
}
SET_KEYS = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float,
    "repeat_penalty": float, "seed": int, "max_tokens": int,
}
BLOCK = '"""'
# Control characters a model may emit (escape sequences among them) are not sent to the
# terminal as they are; newlines and tabs are.
_CONTROL = {c: None for c in list(range(0x00, 0x20)) + [0x7F] + list(range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


def screen_text(text: str) -> str:
    return text.translate(_CONTROL)


def _input_complete(text: str) -> bool:
    """Whether Enter should send `text` (else it starts a new line)."""
    if text.endswith("\\"):
        return False
    if text.lstrip().startswith(BLOCK):
        lines = text.strip().split("\n")
        return len(lines) > 1 and lines[-1].strip() == BLOCK or (
            len(lines) == 1 and text.strip().endswith(BLOCK) and len(text.strip()) >= 6)
    return True


def clean_input(text: str) -> str:
    """The message typed: block quotes removed, `\\` line continuations joined."""
    stripped = text.strip()
    if stripped.startswith(BLOCK) and stripped.endswith(BLOCK) and len(stripped) >= 6:
        stripped = stripped[3:-3]
        return stripped.strip("\n")
    return text.replace("\\\n", "\n").strip()


class Repl:
    def __init__(self, engine: Engine, conv: Conversation, sampling: Sampling, *, model_name: str,
                 images: list | None = None):
        self.engine = engine
        self.conv = conv
        self.sampling = sampling
        self.model_name = model_name
        self.last_stats: Stats | None = None
        self.pending_images: list = list(images or [])   # go with the next message

    # -- prompt_toolkit -----------------------------------------------------------------

    def _session(self):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import Completer, Completion
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        from llamactl import paths

        class SlashCompleter(Completer):
            def get_completions(self, document, complete_event):
                text = document.text_before_cursor
                if not text.startswith("/") or " " in text:
                    return
                for name, help_text in COMMANDS.items():
                    if name.startswith(text):
                        yield Completion(name, start_position=-len(text), display_meta=help_text)

        bindings = KeyBindings()

        @bindings.add("enter")
        def _enter(event):
            buf = event.current_buffer
            if _input_complete(buf.text):
                buf.validate_and_handle()
            elif buf.text.endswith("\\"):
                buf.delete_before_cursor(1)
                buf.insert_text("\n")
            else:
                buf.insert_text("\n")

        @bindings.add("escape", "enter")
        def _newline(event):
            event.current_buffer.insert_text("\n")

        try:
            state = paths.ensure(paths.state_dir())
            history = FileHistory(str(state / "chat_history"))
        except LlamactlError:
            history = InMemoryHistory()
        return PromptSession(
            history=history, completer=SlashCompleter(), complete_while_typing=False,
            key_bindings=bindings, multiline=True,
            prompt_continuation=lambda width, line_number, is_soft_wrap: "." * (width - 1) + " ",
        )

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        session = self._session()
        output.note(f"{self.model_name} · context {self.engine.n_ctx} tokens · /help for commands, Ctrl-D to exit")
        while True:
            try:
                text = session.prompt(">>> ")
            except KeyboardInterrupt:
                continue            # Ctrl-C at the prompt: the line is cleared
            except EOFError:
                return 0            # Ctrl-D
            if not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                try:
                    if self.command(text.strip()) == "exit":
                        return 0
                except LlamactlError as exc:
                    output.error(exc.message)
                    if exc.hint:
                        output.hint(exc.hint)
                continue
            message = clean_input(text)
            if not message:
                continue
            self.conv.add("user", message, self.pending_images)
            self.pending_images = []
            try:
                self.answer()
            except LlamactlError as exc:   # e.g. a chat template that refuses the conversation
                if self.conv.messages and self.conv.messages[-1]["role"] == "user":
                    self.conv.messages.pop()
                output.error(exc.message)
                if exc.hint:
                    output.hint(exc.hint)

    def answer(self) -> None:
        """Generate the assistant's answer to the conversation as it stands."""
        engine = self.engine
        try:
            trim = fit_to_context(self.conv, engine.count_chat_tokens, engine.n_ctx,
                                  answer_reserve(engine.n_ctx, self.sampling.max_tokens))
        except ContextOverflow as exc:
            self.conv.messages.pop()   # the message that does not fit
            output.error(exc.message)
            if exc.hint:
                output.hint(exc.hint)
            return
        if trim.dropped_turns:
            output.note(trim.notice(engine.n_ctx))
        parts: list[str] = []
        stats: Stats | None = None
        stream = engine.stream_chat(self.conv.as_messages(), self.sampling)
        started = False
        try:
            for item in stream:
                if isinstance(item, Piece):
                    text = item.text
                    if not started:
                        text = text.lstrip()
                        if not text:
                            continue
                        started = True
                    parts.append(text)
                    output.stream(screen_text(text))
                else:
                    stats = item
        except KeyboardInterrupt:
            stream.close()
            stats = engine.last_stats
            if stats is not None:
                stats.finish_reason = "interrupted"
        answer = "".join(parts)
        self.conv.add("assistant", answer.strip())
        output.stream("\n")
        if stats is not None:
            self.last_stats = stats
            output.note(self._stats_line(stats))

    def _stats_line(self, s: Stats) -> str:
        line = (f"{s.completion_tokens} tokens · {s.generation_tps:.1f} tok/s · "
                f"TTFT {s.ttft_seconds:.2f} s · context {self.engine.context_used}/{self.engine.n_ctx}")
        if s.draft_tokens:
            line += f" · {output.draft_text(s)}"
        if s.finish_reason == "interrupted":
            line += " · interrupted"
        elif s.finish_reason == "length":
            line += " · stopped at the token limit"
        return line

    # -- slash commands -------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        handler = {
            "/help": self.cmd_help, "/exit": lambda a: "exit", "/quit": lambda a: "exit",
            "/bye": lambda a: "exit", "/clear": self.cmd_clear, "/system": self.cmd_system,
            "/set": self.cmd_set, "/save": self.cmd_save, "/load": self.cmd_load,
            "/stats": self.cmd_stats, "/retry": self.cmd_retry, "/image": self.cmd_image,
        }.get(name.lower())
        if handler is None:
            output.warn(f"unknown command {name}; /help lists the commands")
            return None
        return handler(arg)

    def cmd_help(self, arg: str) -> None:
        lines = [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
        lines += ["", '  multi-line input: end a line with \\, or put the text between """ lines, '
                      "or press Esc then Enter for a new line",
                  "  Ctrl-C stops an answer or clears the line; Ctrl-D exits"]
        output.info("\n".join(lines))

    def cmd_clear(self, arg: str) -> None:
        self.conv.clear()
        self.pending_images = []
        output.note("conversation cleared")

    def cmd_image(self, arg: str) -> None:
        path = self._path(arg, "/image")
        if path is None:
            return
        images = self.engine.images
        if images is None:
            output.error(f"{self.model_name} has no vision projector, so it cannot read images")
            output.hint("start the chat with --mmproj FILE (the model's mmproj-*.gguf)")
            return
        from llamactl.images import read_image

        image = read_image(path)        # a bad file: one line, the session goes on
        n_tokens, _ = images.count(image)
        plan = images.plan(image)
        self.pending_images.append(image)
        output.note(f"attached {path.name} ({image.width}x{image.height}, {plan.rows}x{plan.cols} tiles, "
                    f"{n_tokens} tokens): it goes with your next message")

    def cmd_system(self, arg: str) -> None:
        if not arg:
            output.info(f"system prompt: {self.conv.system}" if self.conv.system else "no system prompt")
            return
        self.conv.system = arg
        output.note("system prompt set")

    def cmd_set(self, arg: str) -> None:
        if not arg:
            current = {f.name: getattr(self.sampling, f.name) for f in fields(self.sampling)}
            output.info("  ".join(f"{k}={v}" for k, v in current.items()))
            return
        parts = arg.split()
        key = parts[0].lower().replace("-", "_")
        if key not in SET_KEYS or len(parts) != 2:
            output.warn("usage: /set KEY VALUE with KEY one of " + ", ".join(SET_KEYS))
            return
        raw = parts[1]
        if raw.lower() in ("none", "off", "default") and key in ("seed", "max_tokens"):
            value = None
        else:
            try:
                value = SET_KEYS[key](raw)
            except ValueError:
                output.warn(f"{key} takes a {SET_KEYS[key].__name__}, not {raw!r}")
                return
            if value < 0 or (key in ("top_p", "min_p") and value > 1) or (key == "max_tokens" and value == 0):
                output.warn(f"{key} {raw} is out of range")
                return
        setattr(self.sampling, key, value)
        output.note(f"{key} = {value}")

    def _path(self, arg: str, what: str) -> Path | None:
        if not arg:
            output.warn(f"usage: {what} FILE")
            return None
        try:
            parts = shlex.split(arg)
        except ValueError:
            parts = [arg]
        return Path(parts[0] if len(parts) == 1 else arg).expanduser()

    def cmd_save(self, arg: str) -> None:
        path = self._path(arg, "/save")
        if path is None:
            return
        self.conv.save(path, model=self.model_name, sampling=self.sampling.to_dict())
        output.note(f"saved {len(self.conv.messages)} messages to {path}")

    def cmd_load(self, arg: str) -> None:
        path = self._path(arg, "/load")
        if path is None:
            return
        self.conv = Conversation.load(path)
        output.note(f"loaded {len(self.conv.messages)} messages from {path}")

    def cmd_stats(self, arg: str) -> None:
        used = self.engine.context_used
        lines = [f"context: {used}/{self.engine.n_ctx} tokens ({100 * used / self.engine.n_ctx:.0f}%), "
                 f"{len(self.conv.messages)} messages"]
        s = self.last_stats
        if s is None:
            lines.append("no answer yet")
        else:
            lines.append(f"last answer: {s.completion_tokens} tokens at {s.generation_tps:.1f} tok/s; "
                         f"prompt {s.prompt_tokens} tokens ({s.prompt_tokens_evaluated} evaluated, "
                         f"{s.prompt_tps:.1f} tok/s); time to first token {s.ttft_seconds:.2f} s; "
                         f"finish: {s.finish_reason}")
            if self.engine.draft is not None:
                lines.append(f"draft {self.engine.draft.name}: " + (
                    f"{s.draft_accepted_tokens} of {s.draft_tokens} proposed tokens accepted "
                    f"({100 * (s.draft_acceptance or 0):.0f}%)" if s.draft_tokens else
                    "nothing drafted for this answer (a grammar or images switch the draft off)"))
        output.info("\n".join(lines))

    def cmd_retry(self, arg: str) -> None:
        msgs = self.conv.messages
        if msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if not msgs or msgs[-1]["role"] != "user":
            output.warn("nothing to retry yet")
            return
        self.answer()


def run_repl(engine: Engine, conv: Conversation, sampling: Sampling, *, model_name: str,
             images: list | None = None) -> int:
    return Repl(engine, conv, sampling, model_name=model_name, images=images).run()
