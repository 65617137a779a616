"""Offsets a partition's log deleted before this group read them: said, counted, read past.

A checkpoint older than the log's start (retention or `DeleteRecords` removed what a
worker that was down, halted or slow never read) is out of range. Both clients are told
to read on from the oldest record left, never from the end, whatever
`starting_position` says: it names where a group with no checkpoint starts, and the
records still in the log are unread (a reset to the end skipped every one of them, and
nothing said so). The offsets between the checkpoint and the log's start are gone: the
worker says so once per reset (ERROR) and counts them, as the Kinesis source does its
trimmed records. Offsets, not records: a transaction marker among them is one.

How each client reports it:
- aiokafka (`auto_offset_reset="none"`): `getmany` raises `OffsetOutOfRangeError` with the
  offset it fetched at; the source asks the log's start and seeks there (`OldestLeft`).
- librdkafka resets by itself (`auto.offset.reset=earliest`; its "error" mode leaves the
  partition unseekable until it is assigned again). The records after a reset start
  past where the last ones ended, and the low watermark of the fetch that brought them
  is past that too (`gap_expired`): a compacted topic's gaps leave the log start behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from worker.observe.metrics import Metrics
from worker.observe.tallies import TallyFamily

log = logging.getLogger("worker.source.kafka")

#: The reset policy both clients are given (see the module's docstring).
AIOKAFKA_RESET = "none"
LIBRDKAFKA_RESET = "earliest"


class ExpiredOffsets:
    """Says and counts the offsets a partition lost to its log's start moving past them."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._counter: TallyFamily | None = None
        #: Partition label -> the log start its last count ended at. A partition read
        #: again from a checkpoint behind it (revoked before its end was committed, and
        #: assigned back) meets the same deleted offsets again: counted once per process.
        self._counted: dict[str, int] = {}

    def attach(self, metrics: Metrics) -> None:
        self._counter = metrics.partition_counter(
            "worker_offsets_expired",
            "Kafka offsets past the committed position that the log deleted (retention, "
            "DeleteRecords) before this group read them: lost; reading went on from the "
            "oldest record left.",
        )

    def passed(self, label: str, position: int, oldest: int) -> int:
        """Reading moves from `position` to `oldest`, the log's start: the offsets between
        are gone (none if the position was past the end: a topic made again, or a log
        cut back, is read again from its start, duplicates over loss)."""
        before = self._counted.get(label, -1)
        if position < oldest <= before:  # counted already (see `_counted`)
            return 0
        position = max(position, before) if before < oldest else position
        lost = max(oldest - position, 0)
        if lost:
            self._counted[label] = oldest
            log.error(
                "event=offsets_expired partition=%s position=%d oldest=%d offsets=%d "
                "note='deleted before they were read: lost; reading on from the oldest "
                "record left (worker_offsets_expired_total)'", label, position, oldest, lost,
            )  # fmt: skip
            if self._counter is not None:
                self._counter.labels(self._source, label).inc(lost)
        else:
            log.warning(
                "event=position_past_end partition=%s position=%d oldest=%d note='the "
                "partition ends before the checkpoint (topic made again, or its log cut "
                "back): reading it again from its oldest record'", label, position, oldest,
            )  # fmt: skip
        return lost


def gap_expired(first: int, expected: int, low: int) -> int:
    """The offsets lost before `first`, the first record fetched of a partition whose
    records so far ended at `expected` (next to read), with `low` the log start of the
    fetch that brought it: only what the log deleted, not a compacted topic's holes nor
    transaction markers (the log start did not move past them)."""
    if first <= expected or low <= expected:
        return 0
    return min(low, first) - expected


async def oldest_left(
    consumer: Any, out_of_range: Mapping[TopicPartition, int], expired: ExpiredOffsets, label: Any
) -> dict[TopicPartition, int]:
    """aiokafka: seek partitions whose fetch offset is out of range to their log's start,
    saying what was lost; where each now starts. A partition no longer assigned is the
    next owner's to read.

    The partitions sought: their positions cover only records returned or counted lost
    (the source trusts them, `FetchTrust`), so a log deleted to its end is committed
    past once the partition settles; else its lag stays and every later owner, reading
    from the old checkpoint, counts the same offsets again."""
    assigned = consumer.assignment()
    tps = [tp for tp in out_of_range if tp in assigned]
    if not tps:
        return {}
    starts = await consumer.beginning_offsets(tps)
    sought = {tp: starts[tp] for tp in tps if tp in consumer.assignment()}
    for tp, start in sought.items():
        expired.passed(label(tp), out_of_range[tp], start)
        consumer.seek(tp, start)
    return sought


class Continuity:
    """librdkafka, on the poller thread only: where each partition's records so far end,
    to tell a reset's gap from a compacted topic's (see the module's docstring). Per
    fetched partition, two offsets read; the log start only where records jump ahead."""

    def __init__(self, low: Callable[[TopicPartition], int | None]) -> None:
        self._low = low
        self._next: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        """Reading `tp` starts at `offset` (a new assignment): the records so far end there."""
        self._next[tp] = offset

    def after(
        self, chunks: Mapping[TopicPartition, Sequence[Any]],
        ends: Mapping[TopicPartition, int] | None = None,
    ) -> dict[Any, tuple[int, int]]:  # fmt: skip
        """The partitions of `chunks` (records by partition, in offset order) whose first
        record, or whose end reached (`ends`, served after a partition's records), comes
        after offsets the log deleted: (where the last records ended, where the deletion
        ended). An end is the only word of a reset to a log with no record left."""
        gaps: dict[Any, tuple[int, int]] = {}
        known = self._next
        for tp, records in chunks.items():
            self._jump(tp, records[0].offset, gaps)
            known[tp] = records[-1].offset + 1
        for tp, end in (ends or {}).items():
            if end > known.get(tp, end):
                self._jump(tp, end, gaps)
                known[tp] = end
        return gaps

    def _jump(self, tp: TopicPartition, first: int, gaps: dict[Any, tuple[int, int]]) -> None:
        expected = self._next.get(tp)
        if expected is not None and first > expected and tp not in gaps:
            low = self._low(tp)
            if low is not None and gap_expired(first, expected, low):
                gaps[tp] = (expected, min(low, first))

    def reached(self, tp: TopicPartition) -> int:
        """Where `tp`'s records so far end (-1 if unknown): every offset below was served,
        skipped (markers, compaction) or counted in a gap."""
        return self._next.get(tp, -1)
