"""A conversation: an optional system prompt and user/assistant messages; keeping it
inside the context window; saving and loading it as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.errors import LlamactlError, NotFound

FORMAT = "llamactl-chat"
VERSION = 1
ROLES = ("system", "user", "assistant")


class ContextOverflow(LlamactlError):
    """One message (with the system prompt) does not fit the context window (exit 1)."""


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict] = field(default_factory=list)   # user/assistant only, in order

    def as_messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.messages]

    def add(self, role: str, content: str, images: list | None = None) -> None:
        """`images`: llamactl.images.ImageFile objects that go with a user message (saved as
        their paths)."""
        message: dict = {"role": role, "content": content}
        if images:
            message["images"] = list(images)
        self.messages.append(message)

    def clear(self) -> None:
        self.messages = []

    def last_user_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i]["role"] == "user":
                return i
        return None

    def to_dict(self, **extra: Any) -> dict:
        doc = {"format": FORMAT, "version": VERSION, "system": self.system,
               "messages": [_saved(m) for m in self.messages]}
        doc.update(extra)
        return doc

    @classmethod
    def from_obj(cls, obj: Any, source: str = "conversation") -> "Conversation":
        """From a saved conversation, or a plain list of {role, content} messages."""
        if isinstance(obj, dict):
            messages = obj.get("messages")
            system = obj.get("system")
        else:
            messages, system = obj, None
        if not isinstance(messages, list) or (system is not None and not isinstance(system, str)):
            raise LlamactlError(f"{source} is not a conversation: expected a 'messages' list",
                                hint="save one with /save FILE in `llamactl chat`")
        conv = cls(system=system or None)
        for i, m in enumerate(messages):
            if (not isinstance(m, dict) or m.get("role") not in ROLES
                    or not isinstance(m.get("content"), str)):
                raise LlamactlError(f"{source}: message {i + 1} is not a {{role, content}} pair "
                                    "with role system, user or assistant")
            if m["role"] == "system":
                conv.system = m["content"] or None
                continue
            images = m.get("images") or []
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                raise LlamactlError(f"{source}: message {i + 1} has 'images' that are not a list of paths")
            if images:
                from llamactl.images import read_image

                images = [read_image(p) for p in images]
            conv.add(m["role"], m["content"], images)
        return conv

    def save(self, path: Path, **extra: Any) -> Path:
        from llamactl.fsutil import atomic_write_bytes

        path = Path(path).expanduser()
        payload = json.dumps(self.to_dict(**extra), indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_bytes(path, payload.encode("utf-8"))
        except OSError as exc:
            raise LlamactlError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return path

    @classmethod
    def load(cls, path: Path) -> "Conversation":
        path = Path(path).expanduser()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"conversation file not found: {path}") from None
        except OSError as exc:
            raise LlamactlError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LlamactlError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_obj(obj, source=str(path))


def _saved(message: dict) -> dict:
    out = {k: v for k, v in message.items() if k != "images"}
    if message.get("images"):
        out["images"] = [img.path for img in message["images"]]
    return out


@dataclass
class Trim:
    dropped_messages: int = 0
    dropped_turns: int = 0
    tokens_before: int = 0
    tokens_after: int = 0

    def notice(self, n_ctx: int) -> str:
        return (f"context full: dropped the oldest {self.dropped_turns} "
                f"turn{'s' if self.dropped_turns != 1 else ''} ({self.tokens_before} -> "
                f"{self.tokens_after} tokens of a {n_ctx}-token window)")


def answer_reserve(n_ctx: int, max_tokens: int | None) -> int:
    """Room kept free for the answer when deciding whether the conversation fits."""
    room = n_ctx // 4
    return min(room, max_tokens) if max_tokens else room


def fit_to_context(conv: Conversation, count_tokens: Callable[[list[dict]], int], n_ctx: int,
                   reserve: int) -> Trim:
    """Drop the oldest user/assistant turns (never the system prompt, never the last user
    message) until the prompt plus `reserve` tokens fits in `n_ctx`. Raises ContextOverflow
    when the last message alone (with the system prompt) leaves no room for an answer."""
    trim = Trim()
    tokens = count_tokens(conv.as_messages())
    trim.tokens_before = trim.tokens_after = tokens
    if tokens + reserve <= n_ctx:
        return trim
    last_user = conv.last_user_index()
    keep_from = last_user if last_user is not None else len(conv.messages) - 1
    # drop whole turns from the front: a user message and the answers after it
    while keep_from > 0 and tokens + reserve > n_ctx:
        cut = 1
        while cut < keep_from and conv.messages[cut]["role"] != "user":
            cut += 1
        del conv.messages[:cut]
        keep_from -= cut
        trim.dropped_messages += cut
        trim.dropped_turns += 1
        tokens = count_tokens(conv.as_messages())
    trim.tokens_after = tokens
    if tokens >= n_ctx:
        what = "the message" if not conv.system else "the message with the system prompt"
        raise ContextOverflow(
            f"{what} is {tokens} tokens; the context window is {n_ctx} tokens",
            hint="use a larger --ctx (up to the model's trained context), or a shorter input")
    return trim
