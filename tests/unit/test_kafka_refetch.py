"""After a `getmany` that raised, nothing aiokafka dropped is skipped (`kafka.refetch`),
without a broker: a stand-in copies what aiokafka's `Fetcher.fetched_records` does (read
from its code; measured on the real broker in tests/integration/test_kafka_corrupt_batch):
it drains partitions in turn, moving each one's position, and a batch that fails raises
with the records drained so far, the raising partition's position unmoved."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException

from worker.sources.kafka import refetch
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.refetch import Refetch, culprits
from worker.sources.kafka.source import KafkaSource

HEALTHY, BAD = TopicPartition("t", 0), TopicPartition("t", 1)
MAX = 500


class State:
    def __init__(self, position: int) -> None:
        self.position = position
        self.has_valid_position = True


class Consumer:
    """Partitions of `ends[tp]` records, `bad` offsets failing to read; drained in `order`."""

    def __init__(self, ends: dict[TopicPartition, int], bad: set[tuple[Any, int]]) -> None:
        self.ends, self.bad = ends, bad
        self.states = {tp: State(0) for tp in ends}
        self.order = list(ends)
        self._fetcher = SimpleNamespace()
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=self))
        self.calls: list[tuple[TopicPartition, ...]] = []

    def state_value(self, tp: TopicPartition) -> State:
        return self.states[tp]

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.states[tp].position = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        self.calls.append(tps)
        drained: dict[TopicPartition, list[Any]] = {}
        for tp in self.order:
            if tps and tp not in tps:
                continue
            state, out = self.states[tp], []
            offset = state.position
            while offset < self.ends[tp] and len(out) < max_records:
                if (tp, offset) in self.bad:
                    raise CorruptRecordException(f"Invalid CRC - {tp!r}")  # drained: dropped
                out.append(SimpleNamespace(offset=offset))
                offset += 1
            if out:
                state.position = offset
                drained[tp] = out
                max_records -= len(out)
                if not max_records:
                    break
        return drained


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def started(consumer: Consumer, clock: Clock) -> tuple[Refetch, list[int]]:
    guard, counted = Refetch(MAX, clock), []
    guard.count_with(lambda: counted.append(1))
    guard.started(consumer.ends, {tp: 0 for tp in consumer.ends})
    return guard, counted


async def fetch(guard: Refetch, consumer: Consumer, got: dict) -> None:
    """One fetch as the source makes it: a raise is the worker's poll_failed."""
    try:
        chunks = await guard.getmany(consumer, 0)
    except CorruptRecordException:
        return
    guard.returned(chunks)
    for tp, records in chunks.items():
        got.setdefault(tp, []).extend(r.offset for r in records)


async def test_records_drained_before_a_raise_are_read_again_and_the_good_ones_before_it_come():
    consumer = Consumer({HEALTHY: 40, BAD: 9}, bad={(BAD, o) for o in range(3, 6)})
    clock = Clock()
    guard, counted = started(consumer, clock)
    got: dict = {}
    await fetch(guard, consumer, got)  # HEALTHY drained, then BAD raised: HEALTHY dropped
    assert got == {}
    assert consumer.states[HEALTHY].position == 0  # read again, not skipped
    for _ in range(12):
        await fetch(guard, consumer, got)
    assert got[HEALTHY] == list(range(40))  # once each, in order
    assert got[BAD] == [0, 1, 2]  # the good batch before the bad one came
    assert consumer.states[BAD].position == 3  # and it waits at the bad one
    assert counted  # every raise after the first (the worker counts that one) is counted


async def test_a_stuck_partition_is_retried_once_a_second_and_warned_once_a_window(caplog):
    consumer = Consumer({HEALTHY: 1, BAD: 5}, bad={(BAD, 0)})
    clock = Clock()
    guard, counted = started(consumer, clock)
    got: dict = {}
    for _ in range(10):  # narrowed to one record a call, still raising: stuck at 0
        await fetch(guard, consumer, got)
    stuck = [r for r in caplog.records if "event=fetch_stuck" in r.getMessage()]
    assert len(stuck) == 1 and "partition=t-1 offset=0 " in stuck[0].getMessage()
    probes = sum(1 for c in consumer.calls if c == (BAD,))
    for _ in range(50):  # no time passed: not fetched again (no hot loop on a bad batch)
        await fetch(guard, consumer, got)
    assert sum(1 for c in consumer.calls if c == (BAD,)) == probes
    clock.now += refetch.RETRY_S
    await fetch(guard, consumer, got)
    assert sum(1 for c in consumer.calls if c == (BAD,)) == probes + 1
    assert len([r for r in caplog.records if "event=fetch_stuck" in r.getMessage()]) == 1
    clock.now += refetch.WARN_S
    await fetch(guard, consumer, got)
    again = [r.getMessage() for r in caplog.records if "event=fetch_stuck" in r.getMessage()]
    assert len(again) == 2 and "failures=2 " in again[1]  # since the last line
    assert BAD not in got and got[HEALTHY] == [0]
    assert len(counted) == 2 + 3  # at 62 and 7 (narrowed to 1), then at 1 three times


async def test_a_partition_that_reads_clean_again_rejoins_the_one_call():
    consumer = Consumer({HEALTHY: 1, BAD: 5000}, bad={(BAD, 10)})
    clock = Clock()
    guard, _ = started(consumer, clock)
    got: dict = {}
    for _ in range(8):
        await fetch(guard, consumer, got)
    assert got[BAD] == list(range(10))
    consumer.bad.clear()  # a transient corruption (on the way), say
    for _ in range(30):
        clock.now += refetch.RETRY_S
        await fetch(guard, consumer, got)
    assert got[BAD] == list(range(5000))
    consumer.calls.clear()
    await fetch(guard, consumer, got)
    assert consumer.calls == [()]  # no suspect left: one call for every partition


async def test_a_forgotten_partition_is_not_fetched_apart_nor_sought():
    consumer = Consumer({HEALTHY: 3, BAD: 5}, bad={(BAD, 0)})
    guard, _ = started(consumer, Clock())
    await fetch(guard, consumer, {})
    guard.forget([BAD, HEALTHY])
    consumer.states[HEALTHY].position = 3
    guard.rewind(consumer)  # type: ignore[arg-type]
    assert consumer.states[HEALTHY].position == 3
    consumer.calls.clear()
    await fetch(guard, consumer, {})
    assert consumer.calls == [()]


def test_the_culprit_is_named_by_the_error_or_by_its_closed_iterator():
    def raising():
        raise CorruptRecordException("no partition named")
        yield  # pragma: no cover

    closed = raising()
    with pytest.raises(CorruptRecordException):
        next(closed)

    def result(iterator: Any) -> SimpleNamespace:
        return SimpleNamespace(_partition_records=SimpleNamespace(_records_iterator=iterator))

    records = {BAD: result(closed), HEALTHY: result(x for x in range(3))}
    consumer = SimpleNamespace(
        assignment=lambda: {HEALTHY, BAD}, _fetcher=SimpleNamespace(_records=records)
    )
    assert culprits(consumer, Exception("a control batch without records")) == {BAD}  # type: ignore[arg-type]
    consumer._fetcher._records = {}
    assert culprits(consumer, CorruptRecordException(f"Invalid CRC - {HEALTHY!r}")) == {HEALTHY}  # type: ignore[arg-type]


def test_no_partition_waits_when_every_assigned_one_is_a_suspect():
    consumer = Consumer({BAD: 5}, bad={(BAD, 2)})
    guard, _ = started(consumer, Clock())
    got: dict = {}

    async def run() -> None:
        for _ in range(6):
            await fetch(guard, consumer, got)

    asyncio.run(run())
    assert got[BAD] == [0, 1]


async def test_the_source_fetches_through_it_and_hands_out_every_record_once():
    """KafkaSource.fetch: what a raise dropped comes in a later fetch, once, in order."""
    config = KafkaSourceConfig(bootstrap_servers=["127.0.0.1:9"], topics=["t"],
                               fetch_max_records=MAX)  # fmt: skip
    source = KafkaSource(config)
    consumer = Consumer({HEALTHY: 40, BAD: 9}, bad={(BAD, 3)})
    source._consumer = consumer  # type: ignore[assignment]
    source._announced = {HEALTHY, BAD}
    source._refetch.started([HEALTHY, BAD], {HEALTHY: 0, BAD: 0})
    got: dict = {}
    for _ in range(12):
        try:
            chunks = await source.fetch(0)
        except CorruptRecordException:
            continue  # the worker's poll_failed
        for tp, records in chunks.items():
            got.setdefault(tp, []).extend(r.offset for r in records)
    assert got == {HEALTHY: list(range(40)), BAD: [0, 1, 2]}


class OutOfRange(Consumer):
    """A fetch at `at` is out of range (aiokafka raises it only with nothing drained)."""

    def __init__(self, ends: dict[TopicPartition, int], at: int) -> None:
        super().__init__(ends, set())
        self.at = at

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        from aiokafka.errors import OffsetOutOfRangeError

        if self.states[HEALTHY].position == self.at and (not tps or HEALTHY in tps):
            self.calls.append(tps)
            raise OffsetOutOfRangeError({HEALTHY: self.at})
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


async def test_an_offset_out_of_range_is_handed_to_the_source_not_rewound_nor_suspected():
    """Not a drop: the partition is read on from its log's start by the source (`expiry`);
    rewound to the offset out of range it would be out of range again, and counted again."""
    consumer = OutOfRange({HEALTHY: 50, BAD: 5}, at=10)
    consumer.seek(HEALTHY, 10)
    fetch = Refetch(MAX)
    fetch.started([HEALTHY, BAD], {HEALTHY: 10, BAD: 0})
    assert await fetch.getmany(consumer, 0.01) == {}
    assert fetch.take_out_of_range() == {HEALTHY: 10} and fetch.out_of_range == {}
    consumer.seek(HEALTHY, 40)  # the source's seek to the log start
    fetch.started([HEALTHY], {HEALTHY: 40})
    got = await fetch.getmany(consumer, 0.01)
    assert [r.offset for r in got[HEALTHY]] == list(range(40, 50))
    assert len(consumer.calls) == 2, "never fetched on its own: no suspect"


class RevokedDuringProbe(Consumer):
    """The suspect's probe waits across a rebalance (aiokafka's `fetched_records` waits
    for a reassignment in progress): its partition is revoked and assigned again (the
    revoke's `forget`, the assignment's `started`) before the probe's records come."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.guard: Refetch | None = None
        self.rebalanced = False

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        guard = self.guard
        suspect = guard._suspects.get(BAD) if guard else None
        if tps == (BAD,) and suspect and suspect.limit * 2 >= MAX and not self.rebalanced:
            self.rebalanced = True
            guard.forget([BAD])
            guard.started([BAD], {BAD: self.states[BAD].position})
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


async def test_a_suspect_revoked_and_assigned_again_during_its_probe_loses_nothing():
    """Failed before: the probe's records came for a suspect forgotten meanwhile, its
    `del` raised KeyError out of `getmany` with the records drained (position moved):
    never handed out, and reading went on past them."""
    consumer = RevokedDuringProbe({HEALTHY: 1, BAD: 5000}, {(BAD, 10)})
    clock = Clock()
    guard, _ = started(consumer, clock)
    consumer.guard = guard
    got: dict = {}
    for _ in range(8):
        await fetch(guard, consumer, got)
    consumer.bad.clear()
    for _ in range(30):
        clock.now += refetch.RETRY_S
        with contextlib.suppress(KeyError):  # the worker's poll_failed: fetching on
            await fetch(guard, consumer, got)
    assert consumer.rebalanced
    assert got[BAD] == list(range(5000))


class DeletedToItsEnd(Consumer):
    """HEALTHY caught up at 10, then 40 records written and all deleted by retention: its
    fetch at 10 is out of range and the log starts at its end (50)."""

    def __init__(self) -> None:
        super().__init__({HEALTHY: 10, BAD: 5}, set())
        self.seek(HEALTHY, 10)
        self._fetcher._records = {}
        self.low = 0

    def delete_to_the_end(self) -> None:
        self.ends[HEALTHY] = self.low = 50

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        from aiokafka.errors import OffsetOutOfRangeError

        position = self.states[HEALTHY].position
        if position < self.low and (not tps or HEALTHY in tps):
            raise OffsetOutOfRangeError({HEALTHY: position})
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.low if tp == HEALTHY else 0 for tp in tps}

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp]

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.ends[tp]


async def test_a_log_deleted_to_its_end_is_read_through_and_the_others_stay_trusted(caplog):
    """No record is left to return, so only the seek to the log start says where reading
    stands: trusted there, the partition is committed past what was counted lost (else its
    lag stays, and every later owner counts the same offsets again). The reset moves that
    partition alone: another's trusted position stays trusted."""
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=["127.0.0.1:9"], topics=["t"]))
    consumer = DeletedToItsEnd()
    source._consumer = consumer  # type: ignore[assignment]
    source._announced = {HEALTHY, BAD}
    source._committed = {HEALTHY: 10, BAD: 0}
    source._refetch.started([HEALTHY, BAD], {HEALTHY: 10, BAD: 0})
    assert [r.offset for r in (await source.fetch(0))[BAD]] == [0, 1, 2, 3, 4]
    assert (source.read_through(HEALTHY), source.read_through(BAD)) == (None, 4)
    consumer.delete_to_the_end()
    assert await source.fetch(0) == {}
    assert "event=offsets_expired partition=t-0 position=10 oldest=50 offsets=40" in caplog.text
    assert (source.read_through(HEALTHY), source.read_through(BAD)) == (49, 4)


class NoCheckpointYet(Consumer):
    """A new group: the fetcher found no committed offset for HEALTHY (no reset asked of
    aiokafka) and raises that once, as the real fetcher does."""

    def __init__(self) -> None:
        super().__init__({HEALTHY: 5, BAD: 5}, set())
        self.pending = True

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict:
        from aiokafka.errors import NoOffsetForPartitionError

        if self.pending:
            self.pending = False
            raise NoOffsetForPartitionError(HEALTHY)
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=max_records)


async def test_no_committed_offset_while_the_source_seeks_is_not_a_failed_poll():
    """Raised while the assignment listener still seeks the new partition: nothing to
    report. As a failed poll it was a warning, a poll error and a 1 s pause at every
    start of a new group (the latency bench's p99: 0.85 s instead of 46 ms)."""
    consumer, fetch = NoCheckpointYet(), Refetch(MAX)
    fetch.started([BAD], {BAD: 0})  # HEALTHY is being prepared: not handed out yet
    assert await fetch.getmany(consumer, 0) == {}
    fetch.started([HEALTHY], {HEALTHY: 0})
    got = await fetch.getmany(consumer, 0)
    assert {tp: [r.offset for r in rs] for tp, rs in got.items()} == {
        HEALTHY: [0, 1, 2, 3, 4], BAD: [0, 1, 2, 3, 4],
    }  # fmt: skip


async def test_no_committed_offset_for_a_partition_handed_out_without_a_position_is_raised():
    from aiokafka.errors import NoOffsetForPartitionError

    consumer, fetch = NoCheckpointYet(), Refetch(MAX)
    consumer.states[HEALTHY].has_valid_position = False
    fetch.started([HEALTHY, BAD], {HEALTHY: 0, BAD: 0})
    with pytest.raises(NoOffsetForPartitionError):
        await fetch.getmany(consumer, 0)
