"""When each Kafka client's fetch position may be committed past transaction markers
(`sources.kafka.markers`), without a broker: only a position that covers nothing but
records returned to the worker (and the markers and aborted records between them).

The clients' behaviour these stand-ins copy was read from their code and measured on
the real broker (the `markers` docstring); the whole path on the real broker, both
clients, is tests/integration/test_kafka_transaction_markers.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from confluent_kafka import KafkaError, Message
from confluent_kafka import TopicPartition as RdTopicPartition

from tests.unit.test_librdkafka_source import RecordingConsumer, started_source
from worker.sources.kafka.markers import FetchTrust, past_markers

TP0 = TopicPartition("t", 0)


@pytest.mark.parametrize(
    ("position", "committed", "end", "through"),
    [
        (15, 14, 15, 14),  # a marker after the last record: pass it
        (15, 10, 15, 14),  # aborted records and their markers: pass them all
        (14, 14, 15, None),  # at the checkpoint already: nothing to commit
        (13, 14, 15, None),  # behind it (a seek back): never backwards
        (16, 14, 15, None),  # past the readable end (an open transaction): not now
        (None, 14, 15, None),  # no trusted position
        (15, None, 15, None),  # no checkpoint known
        (15, 14, None, None),  # no end known
    ],
)
def test_the_position_is_passed_only_past_the_checkpoint_and_within_the_end(
    position, committed, end, through
):
    assert past_markers(position, committed, end) == through


class State:
    """aiokafka's TopicPartitionState, as far as trust reads it."""

    def __init__(self, position: int | None) -> None:
        self._position = position
        self._position_fut = object()

    @property
    def has_valid_position(self) -> bool:
        return self._position is not None

    @property
    def position(self) -> int:
        assert self._position is not None
        return self._position

    def await_reset(self) -> None:  # as aiokafka's: a new position future, no position
        self._position, self._position_fut = None, object()


class Consumer:
    """Where aiokafka keeps the partition states and the fetched, unreturned results."""

    def __init__(self) -> None:
        self.states: dict[TopicPartition, State] = {}
        self._fetcher = type("Fetcher", (), {"_records": {}})()
        self._subscription = self
        self.subscription = self
        self.assignment = self

    def state_value(self, tp: TopicPartition) -> State | None:
        return self.states.get(tp)


def based(position: int = 14) -> tuple[FetchTrust, Consumer]:
    """A partition announced (still held) at the group's offset `position`."""
    trust, consumer = FetchTrust(), Consumer()
    consumer.states[TP0] = State(position)
    trust.started(consumer, [TP0], {TP0: position})  # type: ignore[arg-type]
    return trust, consumer


def test_aiokafka_a_position_moved_by_fetches_from_the_committed_offset_is_trusted():
    trust, consumer = based()
    consumer.states[TP0]._position = 15  # getmany drained a result ending in a marker
    assert trust.position(consumer, TP0) == 15  # type: ignore[arg-type]


def test_aiokafka_a_partition_with_fetched_records_not_yet_returned_is_not_trusted():
    trust, consumer = based()
    # A record too large for the fetch size: the fetcher moved the position past it (by
    # one, never returned) and left the error in its buffer for the next getmany.
    consumer.states[TP0]._position = 15
    consumer._fetcher._records[TP0] = object()
    assert trust.position(consumer, TP0) is None  # type: ignore[arg-type]
    consumer.states[TP0]._position = 11  # [4, 10] returned, 11 still in the result
    assert trust.position(consumer, TP0) is None  # type: ignore[arg-type]
    del consumer._fetcher._records[TP0]  # 11 returned: the result drained
    consumer.states[TP0]._position = 13
    trust.returned(consumer, [TP0])  # type: ignore[arg-type]
    assert trust.position(consumer, TP0) == 13  # type: ignore[arg-type]


def test_aiokafka_a_reset_or_a_new_assignment_ends_the_trust_until_records_return():
    trust, consumer = based()
    consumer.states[TP0].await_reset()  # out of range: reset to the log end, say
    consumer.states[TP0]._position = 900
    assert trust.position(consumer, TP0) is None  # type: ignore[arg-type]
    trust.returned(consumer, [TP0])  # records returned again: consistent from here
    assert trust.position(consumer, TP0) == 900  # type: ignore[arg-type]
    consumer.states[TP0] = State(900)  # revoked and assigned again: a new state
    assert trust.position(consumer, TP0) is None  # type: ignore[arg-type]


def test_aiokafka_a_failed_fetch_or_a_start_off_the_committed_offset_is_not_trusted():
    trust, consumer = based()
    consumer.states[TP0]._position = 15  # a record too large skipped by one, say
    trust.failed()  # and getmany raised its error
    assert trust.position(consumer, TP0) is None  # type: ignore[arg-type]
    fresh, other = FetchTrust(), Consumer()
    other.states[TP0] = State(20)  # not where the group's offset says (a reset) when announced
    fresh.started(other, [TP0], {TP0: 14})  # type: ignore[arg-type]
    assert fresh.position(other, TP0) is None  # type: ignore[arg-type]


class MarkedConsumer(RecordingConsumer):
    """librdkafka after the records of a transaction and its marker: position 15, end 15;
    `consume()` returns what the test puts in `next`."""

    def __init__(self) -> None:
        super().__init__()
        self.next: list[Any] = []
        self.at = 15

    def consume(self, count: int, timeout: float) -> list[Any]:
        out, self.next = self.next, []
        return out

    def get_watermark_offsets(self, partition: RdTopicPartition, cached: bool) -> tuple[int, int]:
        return (0, 15)

    def position(self, partitions: list[RdTopicPartition]) -> list[RdTopicPartition]:
        return [RdTopicPartition(tp.topic, tp.partition, self.at) for tp in partitions]


async def test_librdkafka_the_position_read_with_the_last_consume_is_passed_unless_it_erred():
    source, _ = await started_source()  # TP0, TP1 assigned at 0
    consumer = MarkedConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    consumer.next = [Message(topic="t", partition=0, offset=13, value=b"v", timestamp=(1, 1))]
    chunks = await source.fetch(0.01)
    assert [r.offset for r in chunks[TP0]] == [13]
    await source.commit({TP0: 13})
    assert source.read_through(TP0) == 14  # the marker at 14 passed
    consumer.next = [Message(topic="t", partition=0, error=KafkaError(KafkaError._TRANSPORT))]
    await source.fetch(0.01)
    assert source.read_through(TP0) is None  # a fetch with errors: not trusted
    consumer.next = [Message(topic="t", partition=0, offset=14, value=b"v", timestamp=(1, 1))]
    await source.fetch(0.01)  # records again: consistent from here
    assert source.read_through(TP0) == 14
