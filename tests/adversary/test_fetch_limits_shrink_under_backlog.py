"""The fetch limits change under a backlog on the real broker: a second worker joins and
leaves a 64-partition group at the smallest budget (split evenly, as when the broker
count is unknown: limits 5 KiB a partition, 10 KiB, then 5 KiB again; split by broker,
one response at a time: 43 KiB throughout, results waiting for `getmany` across the
rebalances) while gzip batches far larger than a partition's limit, and one record
larger than a whole fetch, wait. Every record handled exactly once, in partition order,
and committed; the big one whole.

The backlog outlives the join by construction, not by the handler's speed: once the
first worker has handled its share before the join, its calls wait until its revoke
begins (awaited through its source's listener), so the second worker is assigned a
backlog however slow the group's rebalance is on a loaded machine."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    LONG,
    committed_offsets,
    create_topic,
    end_offsets,
    unique,
)
from tests.integration.test_kafka_failures import config
from worker.runtime.backpressure import PREFETCH_SHARE
from worker.runtime.worker import Worker
from worker.sources.base import AssignmentListener
from worker.sources.kafka import source as kafka_source
from worker.sources.kafka.fetch_limits import (
    CLIENT_PREFETCH_BACKOFF_S,
    HOLD_S,
    SPREAD,
    fetch_limits,
    partition_limit,
)
from worker.sources.kafka.source import KafkaSource

pytestmark = pytest.mark.kafka
PARTITIONS = 64
PER_PARTITION = 120
BUDGET = 1024 * 1024  # the smallest allowed
BIG, BIG_PARTITION = 600_000, 7


class _Revoking:
    """The worker's listener, telling `revoking` as a revoke begins."""

    def __init__(self, listener: AssignmentListener, revoking: asyncio.Event) -> None:
        self._listener = listener
        self._revoking = revoking

    def __getattr__(self, name: str) -> object:
        return getattr(self._listener, name)

    async def on_revoked(self, partitions) -> None:
        self._revoking.set()
        await self._listener.on_revoked(partitions)


class RevokeTellingSource(KafkaSource):
    def __init__(self, config, revoking: asyncio.Event) -> None:
        super().__init__(config)
        self._revoking = revoking

    async def start(self, listener: AssignmentListener) -> None:
        await super().start(_Revoking(listener, self._revoking))  # type: ignore[arg-type]


async def backlog(kafka: str, topic: str) -> dict[int, int]:
    await create_topic(kafka, topic, PARTITIONS)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", compression_type="gzip", linger_ms=50,
        max_batch_size=256 * 1024, max_request_size=2**20,
    )  # fmt: skip
    await producer.start()
    try:
        sends = [await producer.send(topic, os.urandom(300), partition=p)
                 for _ in range(PER_PARTITION) for p in range(PARTITIONS)]  # fmt: skip
        await asyncio.gather(*sends)
        await (await producer.send(topic, b"B" * BIG, partition=BIG_PARTITION))
        sends = [await producer.send(topic, b"after", partition=p) for p in range(PARTITIONS)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return await end_offsets(kafka, topic, PARTITIONS)


def split(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "even": the broker count unknown, so the share is split between the partitions."""
    if mode == "even":
        monkeypatch.setattr(kafka_source, "broker_count", lambda consumer: None)


@pytest.mark.parametrize("mode", [pytest.param("even", marks=LONG), "by_broker"])
async def test_limits_changing_mid_backlog_lose_skip_and_reorder_nothing(
    kafka: str, mode: str, monkeypatch: pytest.MonkeyPatch
):
    split(mode, monkeypatch)
    topic, group = unique("shrink"), unique("g")
    ends = await backlog(kafka, topic)
    handled: dict[int, list[int]] = defaultdict(list)
    sizes: dict[tuple[int, int], int] = {}
    progress = {"a": asyncio.Event(), "b": asyncio.Event()}
    counts = {"a": 0, "b": 0}
    a_revoking = asyncio.Event()

    def handler_of(name: str):
        async def handler(batch) -> None:
            if name == "a" and progress["a"].is_set():
                await asyncio.wait_for(a_revoking.wait(), 120)  # the backlog waits for b
            await asyncio.sleep(0.002)  # slow enough for the backlog to outlive b's leave
            for r in batch.records:
                handled[r.partition].append(r.offset)
                sizes[(r.partition, r.offset)] = len(r.value or b"")
            counts[name] += len(batch.records)
            if counts[name] >= 600:
                progress[name].set()

        return handler

    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 25, "maximum_batching_window_ms": 5},
        source={"commit_interval_ms": 50, "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500},
        runtime={"memory_budget_bytes": BUDGET, "rebalance_timeout_s": 10,
                 "shutdown_timeout_s": 10},
    )  # fmt: skip
    a = Worker(cfg, handler=handler_of("a"), source=RevokeTellingSource(cfg.source, a_revoking))
    ta = asyncio.create_task(a.serve())
    b = tb = None
    try:
        await asyncio.wait_for(progress["a"].wait(), 60)
        b = Worker(cfg, handler=handler_of("b"))
        tb = asyncio.create_task(b.serve())
        await asyncio.wait_for(progress["b"].wait(), 60)
        b.request_exit()
        assert await tb == 0
        for _ in range(600):
            if await committed_offsets(kafka, group, topic) == ends:
                break
            await asyncio.sleep(0.1)  # the broker's committed offsets: nothing to await
        fetcher = a.source._consumer._fetcher
        brokers = kafka_source.broker_count(a.source._consumer)
        limits = fetch_limits(cfg.source, int(BUDGET * PREFETCH_SHARE), PARTITIONS, brokers)
        assert limits.one_response == (mode == "by_broker")
        if mode == "even":
            assert limits.partition_bytes == int(BUDGET * PREFETCH_SHARE) // PARTITIONS
        held_back = bool(a.source._consumer.paused())  # the even part while any is paused
        assert fetcher._max_partition_fetch_bytes == partition_limit(limits, held_back)
        held = HOLD_S if limits.one_response else CLIENT_PREFETCH_BACKOFF_S
        assert fetcher._prefetch_backoff == held
    finally:
        for w in (a, b):
            if w is not None:
                w.request_exit()
        assert await ta == 0
    assert counts["b"] > 0
    assert await committed_offsets(kafka, group, topic) == ends
    unordered = {p: offs for p, offs in handled.items() if offs != sorted(offs)}
    assert not unordered, {p: offs[:10] for p, offs in unordered.items()}
    assert {p: offs for p, offs in handled.items()} == {
        p: list(range(end)) for p, end in ends.items()
    }
    assert sizes[(BIG_PARTITION, PER_PARTITION)] == BIG


@pytest.mark.parametrize("mode", ["even", "by_broker"])
async def test_past_the_fetch_floor_the_real_prefetch_is_counted_and_every_record_flows(
    kafka: str, mode: str, monkeypatch: pytest.MonkeyPatch
):
    """400 partitions at the smallest budget: split evenly, a third split 400 ways is under
    the 1 KiB floor, so the client may hold 400 KiB, more than its third (341 KiB). Split
    by broker there is no floor to pass: 43 KiB a partition, one 341 KiB response."""
    split(mode, monkeypatch)
    partitions, topic, group = 400, unique("floor"), unique("g")
    await create_topic(kafka, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=20)
    await producer.start()
    try:
        sends = [await producer.send(topic, os.urandom(400), partition=p)
                 for _ in range(3) for p in range(partitions)]  # fmt: skip
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    ends = await end_offsets(kafka, topic, partitions)
    handled: dict[int, list[int]] = defaultdict(list)

    async def handler(batch) -> None:
        for r in batch.records:
            handled[r.partition].append(r.offset)

    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 25, "maximum_batching_window_ms": 5},
        source={"commit_interval_ms": 50},
        runtime={"memory_budget_bytes": BUDGET},
    )  # fmt: skip
    w = Worker(cfg, handler=handler)
    task = asyncio.create_task(w.serve())
    try:
        for _ in range(600):
            if await committed_offsets(kafka, group, topic) == ends:
                break
            await asyncio.sleep(0.1)  # the broker's committed offsets: nothing to await
        fetcher = w.source._consumer._fetcher
        shown = w.metrics.memory_bytes.labels("kafka", "client_prefetch")._value.get()
        share = int(BUDGET * PREFETCH_SHARE)
        if mode == "even":
            assert fetcher._max_partition_fetch_bytes == 1024
            assert shown == 1024 * partitions > share
        else:
            brokers = kafka_source.broker_count(w.source._consumer)
            assert brokers is not None
            held_back = bool(w.source._consumer.paused())
            assert fetcher._max_partition_fetch_bytes == (
                1024 if held_back else share // brokers // SPREAD  # even: the floor
            )
            assert shown == brokers * (share // brokers) <= share
    finally:
        w.request_exit()
        assert await task == 0
    assert await committed_offsets(kafka, group, topic) == ends
    assert dict(handled) == {p: list(range(end)) for p, end in ends.items()}
