"""The API key check: `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac


def authorized(header: str | None, key: str) -> bool:
    """True when `header` is "Bearer KEY". Both sides are hashed first so that the compare
    takes the same time whatever the length or the content of what was sent."""
    sent = (header or "").encode("utf-8", "replace")
    want = f"Bearer {key}".encode("utf-8")
    return hmac.compare_digest(hashlib.sha256(sent).digest(), hashlib.sha256(want).digest())
