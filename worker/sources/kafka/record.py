"""Gives aiokafka's `ConsumerRecord` the attributes of our record API.

aiokafka builds one `ConsumerRecord` per record; wrapping each in an object of
our own would add a Python allocation per record on the hot path. Instead the
few attributes our API adds are defined once on the class, and the handler
receives aiokafka's objects as they are. `install()` refuses to shadow an
attribute aiokafka itself defines, so a client upgrade that adds one fails
loudly at import instead of changing meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from worker.sources.base import RecordTraits, next_to_read

#: Memory a buffered record costs beyond its value bytes: the ConsumerRecord (measured with
#: tracemalloc: 244 B) plus the key and value bytes objects' headers.
OVERHEAD_BYTES = 320


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

_COLUMNS = attrgetter(
    "offset", "timestamp", "timestamp_type", "key", "value", "checksum",
    "serialized_key_size", "serialized_value_size", "headers",
)  # fmt: skip


def pack(records: Sequence[ConsumerRecord]) -> tuple[Any, ...]:
    """One partition's records as (topic, partition, columns...): every field survives."""
    if not records:
        return ("", 0)
    first = records[0]
    columns = zip(*map(_COLUMNS, records), strict=True)
    return (first.topic, first.partition, *(list(c) for c in columns))


def unpack(packed: tuple[Any, ...]) -> list[ConsumerRecord]:
    topic, partition, *columns = packed
    return [ConsumerRecord(topic, partition, *fields) for fields in zip(*columns, strict=True)]


TRAITS = RecordTraits(
    size=attrgetter("serialized_value_size"),
    timestamp_ms=attrgetter("timestamp"),
    overhead_bytes=OVERHEAD_BYTES,
    pack=pack,
    unpack=unpack,
    shown_checkpoint=next_to_read,
    messaging_system="kafka",
)
