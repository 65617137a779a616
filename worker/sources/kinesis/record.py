"""One Kinesis record with the record API every source gives handlers, and its traits."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import orjson

from worker.sources.base import RecordTraits, last_done


class KinesisRecord:
    """A GetRecords entry; `position` is the sequence number as an int (ordered per shard)."""

    __slots__ = ("key", "position", "sequence_number", "shard_id", "size", "timestamp_ms",
                 "topic", "value")  # fmt: skip
    headers: Sequence[tuple[str, bytes]] = ()
    offset = property(attrgetter("position"))
    partition = 0

    def __init__(
        self, stream: str, shard_id: str, key: bytes, value: bytes, sequence: str, ts_ms: int
    ) -> None:
        self.topic = stream
        self.shard_id = shard_id
        self.key = key
        self.value = value
        self.sequence_number = sequence
        self.position = int(sequence)
        self.timestamp_ms = ts_ms
        self.size = len(value)

    @classmethod
    def from_api(cls, stream: str, shard_id: str, raw: dict[str, Any]) -> KinesisRecord:
        ts_ms = int(raw["ApproximateArrivalTimestamp"].timestamp() * 1000)
        return cls(stream, shard_id, raw["PartitionKey"].encode(), raw["Data"],
                   raw["SequenceNumber"], ts_ms)  # fmt: skip

    def json(self) -> Any:
        return orjson.loads(self.value)


def pack(records: Sequence[KinesisRecord]) -> tuple[Any, ...]:
    """(stream, shard, keys, values, sequence numbers, timestamps) of one shard's records."""
    if not records:
        return ("", "", [], [], [], [])
    first = records[0]
    return (first.topic, first.shard_id, [r.key for r in records], [r.value for r in records],
            [r.sequence_number for r in records], [r.timestamp_ms for r in records])  # fmt: skip


def unpack(packed: tuple[Any, ...]) -> list[KinesisRecord]:
    stream, shard_id, *columns = packed
    return [KinesisRecord(stream, shard_id, *fields) for fields in zip(*columns, strict=True)]


TRAITS = RecordTraits(
    size=attrgetter("size"),
    timestamp_ms=attrgetter("timestamp_ms"),
    overhead_bytes=320,
    pack=pack,
    unpack=unpack,
    shown_checkpoint=last_done,
    messaging_system="aws_kinesis",
)
