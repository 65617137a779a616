"""aiokafka: after a `getmany` that raised, nothing it dropped is skipped; a corrupt batch
stops its own partition, at its offset, and no other.

`Fetcher.fetched_records` drains several partitions' fetched results in one call and
moves each one's position as it drains it (`FetchResult.getall`). An exception raised
while a later partition is iterated (a batch failing its CRC: `CorruptRecordException`;
a control batch without records) leaves the call with the records already drained:
those partitions' positions are past records never returned, and the next fetch reads
on from there. Measured on the real broker (tests/integration/test_kafka_corrupt_batch):
126 of 195 records of a healthy partition never handled, and committed past. The
raising partition's own good records before the bad batch are thrown away with each
raise (its position stays), so they never came either: the partition stuck at its start.

So the source knows, per announced partition, the offset after the last record it
handed out (or where reading started). After a `getmany` that raised, every partition
whose position is past that is sought back to it (a seek drops aiokafka's buffered
result: read again). The partition that raised (the error names it, or its result's
iterator is the one closed by the raise) is fetched on its own from then on, with a
narrower `max_records` after each raise (getall stops before the bad batch: the good
records come) and wider after each success, until it is back to the full size. At one
record a call and raising, the next record to read is in the bad batch: it is not
skipped. The partition waits there, retried once a `RETRY_S`, with a warning naming it
and the offset, repeated with a count once a `WARN_S`; the other partitions flow on.

Whatever `getmany` raised, the rewind applies: so a record too large for the fetch size
(which aiokafka skips by one, raising `RecordTooLargeError`; only with brokers older
than fetch v3) now holds its partition with the same warning instead of being skipped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from worker.sources.kafka.markers import fetch_position

log = logging.getLogger("worker.source.kafka")

#: A raising partition's `max_records` is divided by this after each raise.
NARROW_BY = 8
#: How often a partition stuck at a batch that fails is fetched again.
RETRY_S = 1.0
#: How often the warning of a stuck partition is repeated (with the failures since).
WARN_S = 30.0


@dataclass
class _Suspect:
    """A partition whose fetched result raised: fetched on its own, `limit` at a time."""

    limit: int
    retry_at: float = 0.0
    warned_at: float | None = None
    failures: int = 0  # at the floor, since the last warning

    def read(self, full: int) -> bool:
        """Records came: twice as wide next time; True once back at `full`."""
        self.limit *= 2
        return self.limit >= full

    def raised(self, now: float) -> bool:
        """Narrower next time; at one record a call, wait `RETRY_S`. True if this raise
        is to be warned of (the first at the floor, then one every `WARN_S`)."""
        if self.limit > 1:  # narrower: what comes before the bad batch is returned
            self.limit = max(1, self.limit // NARROW_BY)
            return False
        self.retry_at = now + RETRY_S
        self.failures += 1
        return self.warned_at is None or now - self.warned_at >= WARN_S

    def warned(self, now: float) -> None:
        self.warned_at, self.failures = now, 0


def no_offset_yet(consumer: AIOKafkaConsumer, exc: NoOffsetForPartitionError,
                  handed: Mapping[TopicPartition, Any]) -> bool:  # fmt: skip
    """A partition of a group without a checkpoint, whose fetcher found no committed offset
    (the source asks aiokafka for no reset of its own, `expiry`) while the source's
    assignment listener was still seeking it where `starting_position` says (measured:
    twice per partition, no busy loop: 26 fetches in 4 s at 3 partitions): nothing to
    report. Taken as a failed poll, it was a `poll_failed` warning, a poll
    error counted and a 1 s pause at every start of a new group (the latency bench's p99
    went from 46 ms to 0.85 s). A partition handed out (announced) and still without a
    position is raised, as before."""
    partitions = [tp for tp in exc.args if isinstance(tp, TopicPartition)]
    return bool(partitions) and all(
        tp not in handed or fetch_position(consumer, tp) is not None for tp in partitions
    )


def culprits(consumer: AIOKafkaConsumer, exc: BaseException) -> set[TopicPartition]:
    """The partitions whose fetched result raised `exc`: named in its text (a CRC error
    says "Invalid CRC - TopicPartition(...)"), or whose result's record iterator was
    closed by the raise (a generator ends so only when it raised)."""
    text = str(exc)
    found = {tp for tp in consumer.assignment() if repr(tp) in text}
    for tp, result in getattr(consumer._fetcher, "_records", {}).items():
        records = getattr(result, "_partition_records", None)
        iterator = getattr(records, "_records_iterator", None)
        if inspect.isgenerator(iterator) and inspect.getgeneratorstate(iterator) == (
            inspect.GEN_CLOSED
        ):
            found.add(tp)
    return found


class Refetch:
    """Where each announced partition's next unreturned record is; who raised, and how wide
    to fetch them. One owner: the aiokafka source, which calls `getmany` through it."""

    def __init__(self, max_records: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_records
        self._clock = clock
        #: partition -> the offset after the last record handed out (or reading's start).
        self._handed: dict[TopicPartition, int] = {}
        self._suspects: dict[TopicPartition, _Suspect] = {}
        self._count: Callable[[], None] = lambda: None  # each fetch that raised (metrics)
        #: Partitions a fetch found out of range, by the offset it fetched at: not a drop
        #: (aiokafka raises it only with nothing drained), the source's to read past
        #: (`expiry`). Never raised from here: a probe's follows records already taken.
        self.out_of_range: dict[TopicPartition, int] = {}

    def count_with(self, count: Callable[[], None]) -> None:
        """Each probe that raised is counted with `count` (the worker counts the others)."""
        self._count = count

    def started(self, partitions: Iterable[TopicPartition], at: Mapping[Any, int]) -> None:
        for tp in partitions:
            if tp in at:
                self._handed[tp] = at[tp]

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._handed.pop(tp, None)
            self._suspects.pop(tp, None)

    def returned(self, chunks: Mapping[TopicPartition, Sequence[Any]]) -> None:
        handed = self._handed
        for tp, records in chunks.items():
            if records and tp in handed:
                handed[tp] = records[-1].offset + 1

    async def getmany(
        self, consumer: AIOKafkaConsumer, timeout_s: float
    ) -> dict[TopicPartition, list[Any]]:
        """`consumer.getmany`, the partitions that raised apart (see the module)."""
        timeout_ms = int(timeout_s * 1000)
        if not self._suspects:  # the usual case: one call
            call = consumer.getmany(timeout_ms=timeout_ms, max_records=self._max)
            return await self._guarded(call, consumer)
        rest = [tp for tp in consumer.assignment() if tp not in self._suspects]
        chunks: dict[TopicPartition, list[Any]] = {}
        if rest:
            chunks = await self._guarded(
                consumer.getmany(*rest, timeout_ms=timeout_ms, max_records=self._max), consumer
            )
        else:
            await asyncio.sleep(timeout_s)  # nothing else to wait on: no hot loop
        chunks.update(await self._probe(consumer))
        return chunks

    def take_out_of_range(self) -> dict[TopicPartition, int]:
        out, self.out_of_range = self.out_of_range, {}
        return out

    async def _guarded(self, call: Any, consumer: AIOKafkaConsumer) -> Any:
        try:
            return await call
        except OffsetOutOfRangeError as exc:
            self.out_of_range.update(exc.args[0])
            return {}
        except NoOffsetForPartitionError as exc:
            if not no_offset_yet(consumer, exc, self._handed):
                raise
            return {}
        except Exception as exc:
            found = culprits(consumer, exc)  # before the seeks drop their results
            self.rewind(consumer)
            for tp in found:
                if tp in self._handed:
                    self._suspects.setdefault(tp, _Suspect(max(1, self._max // NARROW_BY)))
            raise

    def rewind(self, consumer: AIOKafkaConsumer, only: TopicPartition | None = None) -> None:
        """Seek every partition (or `only`) whose position passed records not handed out
        back to them."""
        assigned = consumer.assignment()
        back = []
        for tp, offset in self._handed.items():
            if only is not None and tp != only:
                continue
            position = fetch_position(consumer, tp)
            if tp in assigned and position is not None and position > offset:
                consumer.seek(tp, offset)
                back.append(f"{tp.topic}-{tp.partition}:{position}->{offset}")
        if back:
            log.info("event=fetch_rewound partitions=%s note='a failed fetch dropped what it "
                     "had read of them: read again'", ",".join(back))  # fmt: skip

    async def _probe(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """Each suspect on its own, at its width; never waits (the other call did)."""
        out: dict[TopicPartition, list[Any]] = {}
        now, assigned = self._clock(), consumer.assignment()
        for tp, suspect in list(self._suspects.items()):
            if now < suspect.retry_at or tp not in assigned:
                continue
            try:
                got = await consumer.getmany(tp, timeout_ms=0, max_records=suspect.limit)
            except OffsetOutOfRangeError as exc:
                self.out_of_range.update(exc.args[0])
                continue
            except Exception as exc:
                self.rewind(consumer, tp)  # the others' records of this fetch are returned
                self._raised(tp, suspect, exc, now)
                continue
            records = got.get(tp)
            if records:
                out[tp] = records
                # Forgotten during the await (a revoke), it is not this one's to end: a
                # raise here would drop the records drained (their position moved).
                if suspect.read(self._max) and self._suspects.get(tp) is suspect:
                    del self._suspects[tp]
                    log.info("event=fetch_recovered partition=%s-%d offset=%d",
                             tp.topic, tp.partition, records[-1].offset + 1)  # fmt: skip
        return out

    def _raised(self, tp: TopicPartition, suspect: _Suspect, exc: Exception, now: float) -> None:
        self._count()
        if not suspect.raised(now):
            return
        log.warning("event=fetch_stuck partition=%s-%d offset=%s failures=%d error=%r note='the "
                    "next record to read is in a batch that fails to read (see error: a "
                    "CRC error is data corrupt on the broker or on the way); not skipped: the "
                    "partition waits "
                    "here, retried every %.0fs, the others go on'", tp.topic, tp.partition,
                    self._handed.get(tp), suspect.failures, str(exc), RETRY_S)  # fmt: skip
        suspect.warned(now)
