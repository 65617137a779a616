"""When a Kafka client's fetch position may be committed: past transaction markers only.

A transaction's records are followed by a control record (its commit or abort marker),
and under read_committed an aborted transaction's records are skipped as well; neither
client returns them, so the handled positions stop short of the end (see
`runtime.settle`). The fetch position passes them, and it is committed only when it
says "every record below me was returned to the worker" (the worker then checks that
its partition handled and committed all of those).

What the clients do (their code, and measured on the real broker, both clients, one
partition of commit(0-4) marker(5) abort(6-8) marker(9) commit(10-11) marker(12), 2
records a call): the positions after each call were 2, 4, 11, 13; after [4, 10] the
position is 11 while 11 is still held, and 13 only once 11 was returned. An open
transaction stops the position at the last stable offset (0-4 committed, 6-8 open:
position 6 against a high watermark of 9).

aiokafka (`consumer/fetcher.py`): the position moves only in `FetchResult.getall`
(`consumed_to(next_fetch_offset)`): to the last record returned + 1, or, once a fetched
result is drained, to the end of its last batch, past the control batches and aborted
batches after the last record. A paused or re-sought partition's result is dropped
without moving it. It moves otherwise on: a reset (out of range, a new assignment),
which goes through `await_reset` and replaces the state's position future; a seek
(ours: backwards, or to a committed offset); and a record too large for the fetch size,
skipped by one with an error left in the fetcher's buffer (raised from `getmany`). So
`FetchTrust` trusts a position only within one epoch (state and position future) since
records were returned or the partition was announced at its committed offset (sought
there first), with nothing in the fetcher's buffer for it and no failed `getmany` since.

librdkafka: `position()` is the application's position, moved as `consume()` serves
messages from the fetch queue, control messages included (served and dropped, in order);
never past a message still queued. A pause or a seek purges the queue, not the
position (measured: paused after 0-3 were returned, it stayed 4 until the resume; so
did aiokafka's, at 2 after 0-1, its buffered result dropped). The source reads it after
each `consume()` on the poller thread, with the records of that call, and trusts none
after a call that returned errors until the partition returns records again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


def past_markers(position: int | None, committed: int | None, end: int | None) -> int | None:
    """The last position to checkpoint (offsets are next-to-read: the position - 1), when
    the trusted fetch position is past the committed offset and within the readable end."""
    if position is None or committed is None or end is None:
        return None
    return position - 1 if committed < position <= end else None


def _state(consumer: AIOKafkaConsumer, partition: TopicPartition) -> Any:
    try:
        return consumer._subscription.subscription.assignment.state_value(partition)
    except AttributeError:  # not assigned now, or a client that keeps it elsewhere
        return None


def fetch_position(consumer: AIOKafkaConsumer, partition: TopicPartition) -> int | None:
    """aiokafka's own next fetch offset (`position()` is the async form, which waits)."""
    state = _state(consumer, partition)
    return state.position if state is not None and state.has_valid_position else None


def readable_end(consumer: AIOKafkaConsumer, partition: TopicPartition, level: str) -> int | None:
    """Where reading stops now: read_committed stops at the last stable offset (an open
    transaction's records are not readable yet: no stall while it stays open)."""
    if level == "read_committed":
        stable = consumer.last_stable_offset(partition)
        if stable is not None:
            return stable
    return consumer.highwater(partition)


class FetchTrust:
    """aiokafka: which partitions' fetch positions cover only records returned to us."""

    def __init__(self) -> None:
        #: partition -> (its state, its position future) when last known consistent.
        self._epochs: dict[TopicPartition, tuple[Any, Any]] = {}

    def _epoch(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[Any, Any] | None:
        state = _state(consumer, tp)
        if state is None or not state.has_valid_position:
            return None
        return state, getattr(state, "_position_fut", None)

    def started(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition],
        committed: dict[Any, int],
    ) -> None:  # fmt: skip
        """Partitions announced, still held (paused: nothing of theirs returned): one at
        the offset it starts from (the group's, sought there) is consistent there. Now,
        not at the next fetch: the assignment runs inside a `getmany`, and the same call
        may drain a result past the markers (seen: a group left at a marker, never passed)."""
        for tp in partitions:
            epoch = self._epoch(consumer, tp)
            if epoch is not None and epoch[0].position == committed.get(tp):
                self._epochs[tp] = epoch

    def returned(self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
        """After `getmany` returned records of `partitions`: consistent now."""
        for tp in partitions:
            epoch = self._epoch(consumer, tp)
            if epoch is not None:
                self._epochs[tp] = epoch

    def failed(self) -> None:
        """`getmany` raised (a record too large was skipped by one, say): trust nothing
        until records are returned again."""
        self._epochs.clear()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._epochs.pop(tp, None)

    def position(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        """The fetch position if it covers only records returned (or skipped markers)."""
        epoch, now = self._epochs.get(tp), self._epoch(consumer, tp)
        if epoch is None or now is None or now[0] is not epoch[0] or now[1] is not epoch[1]:
            return None  # reset, re-assigned, or never consistent since it was announced
        if tp in getattr(consumer._fetcher, "_records", {tp: None}):
            return None  # fetched and not all returned yet (or an error to raise)
        return epoch[0].position
