"""Gives aiokafka's `ConsumerRecord` the attributes of our record API.

aiokafka builds one `ConsumerRecord` per record; wrapping each in an object of
our own would add a Python allocation per record on the hot path. Instead the
few attributes our API adds are defined once on the class, and the handler
receives aiokafka's objects as they are. `install()` refuses to shadow an
attribute aiokafka itself defines, so a client upgrade that adds one fails
loudly at import instead of changing meaning.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord


def _json(self: ConsumerRecord) -> Any:
    """The value decoded as JSON (orjson); raises orjson.JSONDecodeError on bad input."""
    return orjson.loads(self.value)  # type: ignore[arg-type]


def _timestamp_ms(self: ConsumerRecord) -> int:
    return self.timestamp


def _position(self: ConsumerRecord) -> int:
    return self.offset


_EXTENSIONS: dict[str, Any] = {
    "json": _json,
    "timestamp_ms": property(_timestamp_ms, doc="Record timestamp, epoch milliseconds."),
    "position": property(_position, doc="The offset: the record's order in its partition."),
    "sequence_number": None,
    "shard_id": None,
}


def install() -> None:
    for name, attr in _EXTENSIONS.items():
        current = ConsumerRecord.__dict__.get(name, _EXTENSIONS)
        if current is _EXTENSIONS:
            if hasattr(ConsumerRecord, name) or name in ConsumerRecord.__dataclass_fields__:
                raise RuntimeError(f"aiokafka's ConsumerRecord already defines {name!r}")
            setattr(ConsumerRecord, name, attr)
        elif current is not attr:
            raise RuntimeError(f"aiokafka's ConsumerRecord already defines {name!r}")


install()
