"""How Lambda events, dead-letter documents and envelopes carry bytes (base64) and
positions (JSON numbers): one helper for each, for all of them."""

from __future__ import annotations

import base64


def b64(data: bytes | None) -> str | None:
    """Standard base64 text of `data`, or None for None (a null key stays null)."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


_INT64 = 2**63


def json_position(p: int) -> int | str:
    """An offset as a JSON number; a sequence number past 64 bits as its digits (a JSON
    reader that parses numbers as doubles or int64 would change it)."""
    return p if -_INT64 <= p < _INT64 else str(p)
