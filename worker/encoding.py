"""Base64 as Lambda events, dead-letter documents and envelopes carry bytes: one helper for all."""

from __future__ import annotations

import base64


def b64(data: bytes | None) -> str | None:
    """Standard base64 text of `data`, or None for None (a null key stays null)."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
