"""librdkafka's messages as records of our API, without copying them field by field.

confluent-kafka's `Message` is a C type whose fields are methods (`value()`), so it
cannot take our record API's attributes, and a handler expects them. Copying each
message into an aiokafka `ConsumerRecord` (eleven fields and a `__dict__` per record)
cost about 0.5 us a record on the poller thread, most of what the worker added to a raw
`consume()` loop. A `LibrdkafkaRecord` instead keeps the message and reads it when
asked: creating one stores three slots, the value and its size (what the pipeline and
most handlers read of every record) among them; every other field is a property over
the message. The message owns copies of everything (librdkafka's own message is freed
inside `consume()`), so a record outlives the consumer safely.

What reads every record of a batch gets it in columns at C level instead: the Lambda
event builder (`kafka_rows`) and the handler-process packing (`pack`, shared with the
aiokafka records, so a handler process unpacks either into `ConsumerRecord`s). Pickled
alone, a record becomes a `ConsumerRecord` with the same fields.

A header name that is not UTF-8 (the protocol does not check it; a C or Go producer can
write one) makes confluent-kafka's `Message.headers()` raise SystemError once and then
return, cached, a list holding a NULL where the header should be: touching it crashed
the process (a Lambda-style handler: segmentation fault, exit 139, on every restart), or
the error ended the lane when the dead-letter writer read it (exit 1, on every
restart). Every read of headers goes through `_read_headers`, which catches the first
failure and marks the record, which then has no headers (`()`, logged as
`event=record_headers_unreadable`); the column read stays at C level while no message
has ever failed (`_unreadable`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaError, Message

from worker.sources.base import RecordTraits, next_to_read
from worker.sources.kafka import record as kafka_record

#: librdkafka's timestamp types (0 not available, 1 create, 2 log append) by aiokafka's
#: numbering (0 create, 1 log append).
_TIMESTAMP_TYPES = (0, 0, 1)
#: Per message, at C level: the unbound methods, mapped over a run of messages.
_TOPIC, _PARTITION = Message.topic, Message.partition
_OFFSET, _TIMESTAMP, _KEY = Message.offset, Message.timestamp, Message.key
_HEADERS = Message.headers
_FIRST, _SECOND = itemgetter(0), itemgetter(1)

log = logging.getLogger("worker.source.kafka")

#: Messages whose headers confluent-kafka failed to read, ever, in this process.
_unreadable = 0


def _read_headers(record: LibrdkafkaRecord) -> list[tuple[str, bytes | None]] | None:
    """The message's headers (None for none), or None for a record marked unreadable:
    a message whose first read failed must never be read again (see the module's doc).
    While no message has failed, one global check is all the guard costs."""
    if _unreadable and getattr(record, "_headers_unreadable", False):
        return None
    try:
        return record._message.headers()  # type: ignore[no-any-return]
    except SystemError as exc:  # a header name that is not UTF-8
        record.headers_failed(exc)
        return None


def _headers_column(records: Sequence[LibrdkafkaRecord], messages: list[Message]) -> list[Any]:
    """Each record's headers (None for none): at C level while no message has failed."""
    if _unreadable:
        return list(map(_read_headers, records))
    column: list[Any] = []
    try:
        column.extend(map(_HEADERS, messages))  # stops at a message that fails
    except SystemError as exc:
        # `column` holds the reads before the message that failed, which is marked, not
        # read again (its second read gives the broken list); the rest through the guard.
        records[len(column)].headers_failed(exc)
        column.append(None)
        column.extend(map(_read_headers, records[len(column) :]))
    return column


class LibrdkafkaRecord:
    """One consumed message with the record API of `worker.records.Record` and the
    fields of aiokafka's `ConsumerRecord` (a handler cannot tell the clients apart)."""

    #: `_headers_unreadable` is set only on a record whose headers failed to read.
    __slots__ = ("_headers_unreadable", "_message", "serialized_value_size", "value")

    checksum = None
    sequence_number = None
    shard_id = None

    def __init__(self, message: Message) -> None:
        self._message = message
        value = self.value = message.value()
        self.serialized_value_size = -1 if value is None else len(value)

    @property
    def topic(self) -> str:
        return self._message.topic()  # type: ignore[return-value]

    @property
    def partition(self) -> int:
        return self._message.partition()  # type: ignore[return-value]

    @property
    def offset(self) -> int:
        return self._message.offset()  # type: ignore[return-value]

    position = offset

    @property
    def key(self) -> bytes | None:
        return self._message.key()  # type: ignore[return-value]

    @property
    def timestamp(self) -> int:
        """Epoch milliseconds (-1 when the broker gave none)."""
        return self._message.timestamp()[1]

    timestamp_ms = timestamp

    @property
    def timestamp_type(self) -> int:
        return _TIMESTAMP_TYPES[self._message.timestamp()[0]]

    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]:
        if _unreadable and getattr(self, "_headers_unreadable", False):  # `_read_headers`,
            return ()  # inline: a native handler may read every record's headers
        try:
            return self._message.headers() or ()  # type: ignore[return-value]
        except SystemError as exc:
            self.headers_failed(exc)
            return ()

    def headers_failed(self, exc: BaseException) -> None:
        """This record's headers failed to read: mark it (its message is never read again),
        count it, say so."""
        global _unreadable
        self._headers_unreadable = True
        _unreadable += 1
        message = self._message
        log.warning(
            "event=record_headers_unreadable partition=%s-%s offset=%s error=%r note='a "
            "header name is not UTF-8, which the client cannot read: the record is handed "
            "on without its headers'",
            message.topic(), message.partition(), message.offset(), str(exc.__context__ or exc),
        )  # fmt: skip

    @property
    def serialized_key_size(self) -> int:
        key = self._message.key()
        return -1 if key is None else len(key)

    def json(self) -> Any:
        """The value decoded as JSON (orjson); raises orjson.JSONDecodeError on bad input."""
        return orjson.loads(self.value)  # type: ignore[arg-type]

    def fields(self) -> tuple[Any, ...]:
        """`ConsumerRecord`'s fields, in its order."""
        kind, ts = self._message.timestamp()
        return (self.topic, self.partition, self.offset, ts, _TIMESTAMP_TYPES[kind], self.key,
                self.value, None, self.serialized_key_size, self.serialized_value_size,
                self.headers)  # fmt: skip

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_consumer_record, self.fields())

    def __repr__(self) -> str:
        names = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value")
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, self.fields(), strict=False))
        return f"LibrdkafkaRecord({shown})"

    @staticmethod
    def kafka_columns(records: Sequence[LibrdkafkaRecord]) -> tuple[Iterable[Any], ...]:
        """Offsets, timestamps (ms), timestamp types, keys, values and headers (None for
        none) of `records`, read column by column at C level: the Lambda event builder's
        input (`lambda_compat.events`), without a property call per field and record."""
        messages = list(map(_MESSAGE, records))
        stamps = list(map(_TIMESTAMP, messages))
        kinds = list(map(_FIRST, stamps))
        if kinds.count(kinds[0]) == len(kinds):  # a topic's messages share one type
            kinds = [_TIMESTAMP_TYPES[kinds[0]]] * len(kinds)
        else:
            kinds = list(map(_TIMESTAMP_TYPES.__getitem__, kinds))
        return (list(map(_OFFSET, messages)), list(map(_SECOND, stamps)), kinds,
                list(map(_KEY, messages)), list(map(_VALUE, records)),
                _headers_column(records, messages))  # fmt: skip

    @staticmethod
    def kafka_runs(
        records: Sequence[LibrdkafkaRecord],
    ) -> list[tuple[tuple[str, int], Sequence[LibrdkafkaRecord]]]:
        """The runs of one topic-partition in `records`, told apart at C level (a
        worker's batch is one run: two counts over the columns say so)."""
        messages = list(map(_MESSAGE, records))
        topics, partitions = list(map(_TOPIC, messages)), list(map(_PARTITION, messages))
        n = len(records)
        if partitions.count(partitions[0]) == n and topics.count(topics[0]) == n:
            return [((topics[0], partitions[0]), records)]
        runs, start = [], 0
        for tp, run in groupby(zip(topics, partitions, strict=True)):
            end = start + len(list(run))
            runs.append((tp, records[start:end]))
            start = end
        return runs


_MESSAGE, _VALUE = attrgetter("_message"), attrgetter("value")
_OWN_ERROR, _OWN_PARTITION = methodcaller("error"), methodcaller("partition")
_OWN_TOPIC = methodcaller("topic")


def _python_wrap(messages: list[Message]) -> list[LibrdkafkaRecord]:
    """A record of each message: the C module's twin, where it is not built."""
    return list(map(LibrdkafkaRecord, messages))


def _python_runs(messages: list[Message], with_topic: bool) -> list[tuple[Any, list[Any]]] | None:
    """The records of `messages` in runs of one partition (key: the partition, or topic and
    partition), or None if a message carries an error: the C module's twin."""
    # Each message's own methods, as the C module calls them (a subclass's overrides); an
    # error is anything but None (by `is`, never by ==: a KafkaError compared with None
    # leaves a Python error set), as there.
    if not all(e is None for e in map(_OWN_ERROR, messages)):
        return None
    keys: Iterable[Any] = list(map(_OWN_PARTITION, messages))
    if with_topic:
        keys = zip(map(_OWN_TOPIC, messages), keys, strict=True)
    runs, start = [], 0
    for key, run in groupby(keys):
        end = start + len(list(run))
        runs.append((key, _python_wrap(messages[start:end])))
        start = end
    return runs


try:
    from worker.sources.kafka._librdkafka_wrap import bind as _bind
    from worker.sources.kafka._librdkafka_wrap import runs as _c_runs
except ImportError:  # not built (no compiler at install): the Python twin, slower
    _runs = _python_runs
else:
    # The C module stores the slots `LibrdkafkaRecord.__init__` sets, found by their
    # descriptors (~30 ns a record against ~116 for the type call and `__init__` frame,
    # 1,000 messages, GC off), and reads the messages' fields where a probe of `Message`
    # found them (its methods where not): a fetch's records by partition in ~60 ns a
    # message against ~200 for the error scans, partition map, groupby and wrap it replaces.
    _bind(LibrdkafkaRecord, Message)
    _runs = _c_runs


def _consumer_record(*fields: Any) -> ConsumerRecord:
    """An unpickled record: aiokafka's type with the record API (installed by importing
    `record`, which this module does), the same fields."""
    return ConsumerRecord(*fields)


def clean_chunks(
    messages: Sequence[Message], topic: str | None = None
) -> dict[TopicPartition, list[LibrdkafkaRecord]] | None:
    """The records of `messages` grouped by partition in their order, or None if a message
    carries an error (`by_partition` then). `topic`: the one topic subscribed, so that runs
    are told apart by partition alone.

    The usual fetch: one C-level pass (`_runs`) reads each message's error, partition and
    value and makes its record; the Python loop runs once per run of one partition
    (librdkafka returns a fetch's records of a partition together: a few runs per call)."""
    if type(messages) is not list:  # the C `_runs` takes a list only
        messages = list(messages)
    runs = _runs(messages, not topic)
    if runs is None:
        return None
    chunks: dict[TopicPartition, list[LibrdkafkaRecord]] = {}
    for key, records in runs:
        tp = TopicPartition(topic, key) if topic else TopicPartition(*key)
        known = chunks.get(tp)
        if known is None:
            chunks[tp] = records
        else:
            known.extend(records)
    return chunks


def by_partition(
    messages: Sequence[Message],
    topic: str | None = None,
    hold: Callable[[Sequence[Message]], Sequence[Message]] = lambda messages: messages,
) -> tuple[dict[TopicPartition, list[LibrdkafkaRecord]], list[Any], dict[TopicPartition, int]]:
    """The records of `messages` grouped by partition in their order (`clean_chunks`), the
    errors (the messages that carry one, as librdkafka's `KafkaError`s) and the partitions'
    ends reached (`_PARTITION_EOF`, not an error: the offset every message before it in the
    partition's queue was served below, `expiry.Continuity`). `hold`: what of messages
    that carry errors is read (`BadBatches.hold`), asked with `()` of a fetch without."""
    chunks = clean_chunks(messages, topic)
    if chunks is not None:
        hold(())
        return chunks, [], {}
    messages = hold(messages)
    # Rare: an error travels as a message; not a record. Read as `_runs` reads it.
    errors = list(map(_OWN_ERROR, messages))
    ends: dict[TopicPartition, int] = {}
    for m, e in zip(messages, errors, strict=True):
        if e is not None and e.code() == KafkaError._PARTITION_EOF:
            ends[TopicPartition(m.topic(), m.partition())] = m.offset()
    kept = [m for m, e in zip(messages, errors, strict=True) if e is None]
    errors = [e for e in errors if e is not None and e.code() != KafkaError._PARTITION_EOF]
    chunks = clean_chunks(kept, topic)
    if chunks is None:  # only Python code changing a message's error between two reads
        raise RuntimeError("a message's error changed while its fetch was read")
    return chunks, errors, ends


#: Memory a buffered record costs beyond its value bytes, measured with tracemalloc: the
#: message with its own topic string and key and value bytes objects (274 B) and the
#: record (56 B).
OVERHEAD_BYTES = 330

TRAITS = RecordTraits(
    size=attrgetter("serialized_value_size"),
    timestamp_ms=attrgetter("timestamp_ms"),
    overhead_bytes=OVERHEAD_BYTES,
    pack=kafka_record.pack,
    unpack=kafka_record.unpack,
    shown_checkpoint=next_to_read,
    messaging_system="kafka",
)
