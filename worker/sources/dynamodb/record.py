"""One DynamoDB Streams record: the item change, with the record API every source gives.

The change is kept as AWS puts it in a Lambda event (`eventName`, `dynamodb`
with `Keys`, `NewImage`, `OldImage`, `SequenceNumber`, ..., `eventSourceARN`): botocore's parsed
form is brought back to the wire form once, when the record is read (the
creation time as epoch seconds, binary attributes as base64), so the value, the
Lambda event and the on-failure envelope all carry the same JSON. The key is the
item's primary key (its `Keys`, as sorted JSON): per-key lanes keep one item's
changes in order.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson

from worker.sources.base import RecordTraits, last_done


class MalformedRecord(ValueError):
    """A GetRecords record without what places it in its shard (`dynamodb`, a numeric
    `SequenceNumber`, a numeric creation time). It cannot be dead-lettered (it has no
    position to checkpoint past), so its reader stops with this error and the worker
    with it: nothing is lost, and the line says which record it was."""


class DynamoDBRecord:
    """`position` is the sequence number as an int (ordered within a shard)."""

    __slots__ = ("change", "key", "position", "sequence_number", "shard_id", "size",
                 "timestamp_ms", "topic")  # fmt: skip
    headers: Sequence[tuple[str, bytes]] = ()
    offset = property(attrgetter("position"))
    partition = 0

    def __init__(self, table: str, shard_id: str, change: dict[str, Any]) -> None:
        """`change`: one record in the wire form (see `wire_form`)."""
        stream = change["dynamodb"]
        self.topic = table
        self.shard_id = shard_id
        self.change = change
        self.sequence_number: str = stream["SequenceNumber"]
        self.position = int(self.sequence_number)
        self.key = orjson.dumps(stream.get("Keys", {}), option=orjson.OPT_SORT_KEYS)
        created = stream.get("ApproximateCreationDateTime", 0)
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise TypeError(f"ApproximateCreationDateTime is not epoch seconds: {created!r:.100}")
        self.timestamp_ms = int(created * 1000)
        self.size: int = stream.get("SizeBytes", 0)

    @classmethod
    def from_api(cls, table: str, shard_id: str, raw: dict[str, Any],
                 stream_arn: str) -> DynamoDBRecord:  # fmt: skip
        """Raises MalformedRecord for a record that cannot be placed in its shard."""
        try:
            return cls(table, shard_id, wire_form(raw, stream_arn))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            event_id = raw.get("eventID") if isinstance(raw, dict) else None
            raise MalformedRecord(
                f"dynamodb: shard {shard_id}: GetRecords gave a record that cannot be read "
                f"(eventID {event_id!r:.100}: {type(exc).__name__}: {exc!s:.300}); "
                "nothing at or past it is handled or checkpointed"
            ) from exc

    # -- the change, as the native API names its parts ------------------------------------
    @property
    def value(self) -> bytes:
        """The change as JSON (what the on-failure destination stores)."""
        return orjson.dumps(self.change)

    def json(self) -> Any:
        return orjson.loads(self.value)

    @property
    def event_name(self) -> str:
        """INSERT, MODIFY or REMOVE."""
        return self.change["eventName"]  # type: ignore[no-any-return]

    @property
    def keys(self) -> dict[str, Any]:
        return self.change["dynamodb"].get("Keys", {})  # type: ignore[no-any-return]

    @property
    def new_image(self) -> dict[str, Any] | None:
        return self.change["dynamodb"].get("NewImage")

    @property
    def old_image(self) -> dict[str, Any] | None:
        return self.change["dynamodb"].get("OldImage")

    @property
    def stream_view_type(self) -> str | None:
        return self.change["dynamodb"].get("StreamViewType")

    @property
    def size_bytes(self) -> int:
        return self.size

    @property
    def approximate_creation_time(self) -> float:
        """Epoch seconds, as Lambda's event gives it."""
        return self.change["dynamodb"].get("ApproximateCreationDateTime", 0)  # type: ignore[no-any-return]

    @property
    def user_identity(self) -> dict[str, Any] | None:
        """Set for a delete made by Time to Live: {"type": "Service", "principalId": ...}."""
        return self.change.get("userIdentity")

    @property
    def deserialized(self) -> dict[str, Any]:
        """`keys`, `new_image` and `old_image` as plain Python values (boto3's
        TypeDeserializer: numbers as Decimal, sets as sets, binary as Binary)."""
        from worker.sources.dynamodb.items import plain

        return {"keys": plain(self.keys), "new_image": plain(self.new_image),
                "old_image": plain(self.old_image)}  # fmt: skip


def wire_form(raw: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A GetRecords record as AWS sends it on the wire, with the stream's ARN: a record of
    Lambda's DynamoDB event."""
    change = dict(raw)
    change["eventSourceARN"] = stream_arn
    stream = change["dynamodb"] = dict(raw["dynamodb"])
    created = stream.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        stream["ApproximateCreationDateTime"] = created.timestamp()
    for image in ("Keys", "NewImage", "OldImage"):
        if image in stream:
            stream[image] = {k: _attribute(v) for k, v in stream[image].items()}
    return change


def _attribute(value: dict[str, Any]) -> dict[str, Any]:
    """An AttributeValue with its binary parts as base64 (botocore hands them over as bytes).

    A value not of the documented form (one type and its value; botocore leaves out a type
    its model does not know, giving `{}`) keeps its form, its binary parts as base64 too:
    the handler meets it as it came, and the change stays JSON (the event, the on-failure
    destination), rather than the reader failing on every read of the shard."""
    if isinstance(value, dict) and len(value) == 1:
        ((kind, inner),) = value.items()
        if kind in _CONVERTED or isinstance(inner, bytes):
            return {kind: _inner(kind, inner)}
        return value
    if isinstance(value, dict):
        return {kind: _inner(kind, inner) for kind, inner in value.items()}
    return _b64(value) if isinstance(value, bytes) else value


_CONVERTED = frozenset({"B", "BS", "M", "L"})


def _inner(kind: str, inner: Any) -> Any:
    if kind == "B":
        return _b64(inner)
    if kind == "BS":
        return [_b64(b) for b in inner]
    if kind == "M":
        return {k: _attribute(v) for k, v in inner.items()}
    if kind == "L":
        return [_attribute(v) for v in inner]
    return _b64(inner) if isinstance(inner, bytes) else inner


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data).decode() if isinstance(data, bytes) else data


def pack(records: Sequence[DynamoDBRecord]) -> tuple[Any, ...]:
    """(table, shard, changes) of one shard's records."""
    if not records:
        return ("", "", [])
    first = records[0]
    return (first.topic, first.shard_id, [r.change for r in records])


def unpack(packed: tuple[Any, ...]) -> list[DynamoDBRecord]:
    table, shard_id, changes = packed
    return [DynamoDBRecord(table, shard_id, change) for change in changes]


TRAITS = RecordTraits(
    size=attrgetter("size"),
    timestamp_ms=attrgetter("timestamp_ms"),
    overhead_bytes=640,  # the record object and its change's dicts
    pack=pack,
    unpack=unpack,
    shown_checkpoint=last_done,
    messaging_system="dynamodb",
)
