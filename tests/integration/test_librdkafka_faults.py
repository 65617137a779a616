"""The librdkafka source itself on the real broker, faults aimed at its rebalance path.

No worker process: the source is driven as the worker drives it (`fetch` in a loop, a
listener that records what it is told), so the test can pause a partition, make the
group rebalance (a second member of the group joins, then leaves: real rebalances of
the real broker) and see what the client then fetches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from tests.integration.kafka_helpers import create_topic, unique

confluent_kafka = pytest.importorskip("confluent_kafka")
pytestmark = pytest.mark.kafka

from worker.sources.kafka.config import KafkaSourceConfig  # noqa: E402
from worker.sources.kafka.librdkafka_source import LibrdkafkaSource  # noqa: E402


class Listener:
    """What the source tells the worker, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[str, list[TopicPartition]]] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.said.append(("assigned", list(partitions)))

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.said.append(("revoked", list(partitions)))

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.said.append(("lost", list(partitions)))

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task


def source_config(bootstrap: str, topic: str, group: str) -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate({
        "client": "librdkafka", "bootstrap_servers": [bootstrap], "topics": [topic],
        "group_id": group, "session_timeout_ms": 6000, "heartbeat_interval_ms": 500,
        "starting_position": "trim_horizon",
    })  # fmt: skip


async def started_on_one_partition(
    kafka: str, name: str, records: int = 0
) -> tuple[str, str, TopicPartition, Listener, LibrdkafkaSource]:
    """A new topic of one partition (`records` written first) and a started source on a
    group of its own: topic, group, the partition, the listener, the source."""
    topic, group = unique(name), unique("g")
    await create_topic(kafka, topic, 1)
    if records:
        await produce(kafka, topic, records)
    listener = Listener()
    source = LibrdkafkaSource(source_config(kafka, topic, group))
    await source.start(listener)
    return topic, group, TopicPartition(topic, 0), listener, source


async def fetch_until(source: LibrdkafkaSource, done: Any, timeout_s: float = 20) -> list[Any]:
    """Fetch as the worker does until `done(records so far)`; every record returned."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done(got) and time.monotonic() < deadline:
        for records in (await source.fetch(0.2)).values():
            got.extend(records)
    return got


def member(consumer: Any, took: threading.Event, done: threading.Event) -> None:
    """A second member of the group, in it while it polls; `took` once it has partitions."""
    while not done.is_set():
        consumer.consume(1, 0.1)
        if consumer.assignment():
            took.set()


def join(
    bootstrap: str, group: str, topic: str, took: threading.Event, done: threading.Event
) -> tuple[Any, asyncio.Future[None]]:
    """A second member joins the group (a real rebalance of the real broker) and polls on a
    thread (`member`) until `done`."""
    other = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
        "partition.assignment.strategy": "range,roundrobin",
    })  # fmt: skip
    other.subscribe([topic])
    return other, asyncio.get_running_loop().run_in_executor(None, member, other, took, done)


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, b"%d" % i, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_partition_paused_then_revoked_and_assigned_again_is_read_again(kafka):
    """librdkafka keeps a partition's pause across unassign and assign; the worker's new
    partition is never paused, so it would never resume it: the partition stalled for
    good, silently (before the fix: no record after the re-assignment)."""
    topic, group, tp, listener, source = await started_on_one_partition(kafka, "paused")
    other = None
    try:
        await fetch_until(source, lambda _: ("assigned", [tp]) in listener.said)
        source.pause(tp)  # the memory budget's backpressure does this
        took, joined = threading.Event(), threading.Event()
        other, polling = join(kafka, group, topic, took, joined)
        revoked = ("revoked", [tp])
        await fetch_until(source, lambda _: revoked in listener.said and took.is_set())
        joined.set()
        await polling
        await asyncio.get_running_loop().run_in_executor(None, other.close)
        other = None
        assert ("revoked", [tp]) in listener.said
        await fetch_until(source, lambda _: listener.said[-1] == ("assigned", [tp]))
        assert listener.said[-1] == ("assigned", [tp])
        await produce(kafka, topic, 10)
        got = await fetch_until(source, lambda got: len(got) >= 10)
        assert [r.offset for r in got] == list(range(10))
    finally:
        if other is not None:
            other.close()
        await source.stop()
        for task in listener.tasks:
            task.cancel()


async def test_lag_and_waiting_never_block_the_loop_while_the_poller_is_in_consume(kafka):
    """confluent-kafka's `get_watermark_offsets(cached=True)` waits while another thread is
    inside `consume()`: called from the loop (the watchdog's `waiting`, `lag`), it stalled
    the loop for the poll, and deadlocked it for good when that `consume()` was in a
    rebalance callback waiting for the loop (seen: a session lost in a broker outage, the
    worker deaf to SIGTERM). The source reads them on the poller thread instead."""
    _, _, tp, listener, source = await started_on_one_partition(kafka, "marks", 3)
    try:
        await fetch_until(source, lambda got: len(got) >= 3)
        entered, returned = threading.Event(), threading.Event()
        poll = source._poll

        def watched(timeout_s: float) -> Any:
            entered.set()
            try:
                return poll(timeout_s)
            finally:
                returned.set()

        source._poll = watched  # type: ignore[method-assign]
        fetching = asyncio.ensure_future(source.fetch(2.0))  # nothing to read: waits 2 s
        await asyncio.get_running_loop().run_in_executor(None, entered.wait)
        for _ in range(10):  # the loop's calls, as the watchdog and the lag gauge make them
            lag, waiting = source.lag(tp), source.waiting(tp)
            assert not returned.is_set(), "lag/waiting waited for the poller's consume()"
            await asyncio.sleep(0.05)
        assert (lag, waiting) == (3, False)  # 3 past the commit (none), none past the fetch
        await fetching
    finally:
        await source.stop()
        for task in listener.tasks:
            task.cancel()


async def test_the_revokes_commit_goes_through_while_the_poller_is_in_the_callback(kafka):
    """The revoke's drain commits the handled positions while the poller thread waits in
    librdkafka's revoke callback; a commit from another thread waits while that thread is
    inside consume(): it timed out, the revoke committed nothing (seen: 2 x 10 s holds,
    `final_commit_failed reason=revoked`). Here the listener commits inside the revoke;
    the commit now runs on the poller thread (`librdkafka_calls`)."""
    topic, group = unique("rvk"), unique("g")
    await create_topic(kafka, topic, 1)
    tp = TopicPartition(topic, 0)
    await produce(kafka, topic, 5)
    source = LibrdkafkaSource(source_config(kafka, topic, group))
    committed: list[int] = []

    class Committing(Listener):
        async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
            await asyncio.wait_for(source.commit({tp: 4}), 8)  # handled through offset 4
            committed.append(4)
            await super().on_revoked(partitions)

    listener = Committing()
    await source.start(listener)
    other, joined, polling = None, threading.Event(), None
    try:
        await fetch_until(source, lambda got: len(got) >= 5)
        took = threading.Event()
        other, polling = join(kafka, group, topic, took, joined)
        await fetch_until(source, lambda _: ("revoked", [tp]) in listener.said)
        joined.set()
        await polling
        assert committed == [4], f"the revoke's commit failed: {source._failure}"
        found = other.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=10)
        assert found[0].offset == 5
    finally:
        joined.set()  # the member's thread stops polling before it is closed
        if polling is not None:
            await polling
        if other is not None:
            other.close()
        await source.stop()
        for task in listener.tasks:
            task.cancel()


async def test_stop_while_a_revoke_waits_commits_the_drain_then_closes(kafka):
    """A SIGTERM while librdkafka's revoke callback waits for the drain: the main loop now
    ends (its fetch returns while the poll is pending) and `stop()` runs beside the
    revoke. Its `close()` must wait for that `consume()` to return, and the drain's
    commit, made after `stop()` began, must still reach the broker: the next owner
    starts after what was handled."""
    topic, group = unique("rvkstop"), unique("g")
    await create_topic(kafka, topic, 1)
    tp = TopicPartition(topic, 0)
    await produce(kafka, topic, 5)
    source = LibrdkafkaSource(source_config(kafka, topic, group))
    waiting, go = asyncio.Event(), asyncio.Event()
    committed: list[int] = []

    class Holding(Listener):
        async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
            waiting.set()
            await go.wait()  # the drain: batches still in the handler
            await asyncio.wait_for(source.commit({tp: 4}), 8)
            committed.append(4)
            await super().on_revoked(partitions)

    listener = Holding()
    await source.start(listener)
    other, joined, polling, stopping = None, threading.Event(), None, None
    try:
        await fetch_until(source, lambda got: len(got) >= 5)
        took = threading.Event()
        other, polling = join(kafka, group, topic, took, joined)
        await asyncio.wait_for(fetch_until(source, lambda _: waiting.is_set()), 20)
        assert waiting.is_set(), "no revoke"
        stopping = asyncio.ensure_future(source.stop())
        await asyncio.sleep(0)  # stop() has begun: closing, its close() queued
        assert source.closing and not stopping.done()
        go.set()
        await asyncio.wait_for(stopping, 20)
        assert committed == [4], f"the revoke's commit failed: {source._failure}"
        await asyncio.get_running_loop().run_in_executor(None, took.wait, 20)
        joined.set()  # its consume() returns first: a call beside it would wait for it
        await polling
        found = other.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=10)
        assert found[0].offset == 5
    finally:
        go.set()
        joined.set()
        if polling is not None:
            await polling
        if other is not None:
            other.close()
        if stopping is None:
            await source.stop()
        for task in listener.tasks:
            task.cancel()


class SplitFetch:
    """The source's consumer, the boundary hooked: the first `consume(count - 1, 0)` of
    `consume_queued` that follows a `consume(1, timeout)` which returned records waits on
    the poller thread until `ready` (a second member has asked to join), so the revoke
    is served inside that second call, after the first call's records were taken."""

    def __init__(self, consumer: Any, ready: threading.Event) -> None:
        self._consumer, self._ready = consumer, ready
        self.armed, self.taken, self.split = threading.Event(), [], threading.Event()
        self._last: list[Any] = []

    def consume(self, count: int, timeout: float) -> list[Any]:
        hooked = (self.armed.is_set() and not self.split.is_set() and timeout == 0
                  and count > 1 and self._last)  # fmt: skip
        if hooked:
            self.taken = [(m.partition(), m.offset()) for m in self._last if not m.error()]
            self.split.set()
            self._ready.wait(10)
            time.sleep(2.0)  # the heartbeat (0.5 s) sees the rebalance: a revoke is queued
        out = self._consumer.consume(count, timeout)
        self._last = out if count == 1 and timeout > 0 else []
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


async def test_records_taken_before_a_revoke_served_in_the_same_fetch_are_not_handed_out(kafka):
    """consume_queued joins two consume() calls: a revoke served inside the second comes
    after librdkafka already returned the first call's records (its own purge of a
    revoked partition's messages covers only the call it runs in). Those records must
    not reach the pipeline as the source's (nothing of a revoked partition is handed out
    or committed after on_revoked); the partition is read again by its owner."""
    topic, group, tp, listener, source = await started_on_one_partition(kafka, "split")
    ready, done = threading.Event(), threading.Event()
    hook = SplitFetch(source._consumer, ready)
    source._consumer = hook
    other = polling = None
    try:
        await fetch_until(source, lambda _: ("assigned", [tp]) in listener.said)
        hook.armed.set()
        got: list[Any] = []
        for _ in range(50):  # one record at a time into an idle fetch: consume(1, t) takes it
            await produce(kafka, topic, 1)
            for records in (await source.fetch(0.2)).values():
                got.extend(records)
            if hook.split.is_set():
                break
        assert hook.split.is_set(), "no split fetch"
        took = threading.Event()
        other, polling = join(kafka, group, topic, took, done)
        ready.set()
        after = await fetch_until(source, lambda _: ("revoked", [tp]) in listener.said)
        assert ("revoked", [tp]) in listener.said, listener.said
        revoked_at = listener.said.index(("revoked", [tp]))
        reassigned = ("assigned", [tp]) in listener.said[revoked_at:]
        handed = {(r.partition, r.offset) for r in after}
        assert not (set(hook.taken) & handed) or reassigned, (hook.taken, sorted(handed))
    finally:
        done.set()
        if polling is not None:
            await polling
        if other is not None:
            await asyncio.get_running_loop().run_in_executor(None, other.close)
        await source.stop()
        for task in listener.tasks:
            task.cancel()
