"""Produce IoT telemetry to a Kafka topic, as fast as possible or at a fixed rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from itertools import islice

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from load.telemetry import readings


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Create a topic (the local broker does not create topics on first use) and wait
    until every partition has a leader, so the first sends are not refused and retried
    with a `NotLeaderForPartitionError` line."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(100):
            (topic,) = await admin.describe_topics([name])
            led = [p for p in topic["partitions"] if p["leader"] >= 0]
            if topic["error_code"] == 0 and led and len(led) == len(topic["partitions"]):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def _poisoned(
    source: Iterator[tuple[bytes, bytes]], every: int, limit: int
) -> Iterator[tuple[bytes, bytes]]:
    """Every `every`-th reading cut in half, `limit` times."""
    cut = 0
    for i, (key, value) in enumerate(source, 1):
        if cut < limit and i % every == 0:
            cut += 1
            value = value[: len(value) // 2]
        yield key, value


async def produce(
    bootstrap: str,
    topic: str,
    devices: int = 2000,
    count: int | None = None,
    rate: float | None = None,
    duration_s: float | None = None,
    seed: int = 7,
    linger_ms: int = 20,
    value_bytes: int | None = None,
    invalid: int = 0,
) -> int:
    """Send readings keyed by device id; returns how many were acknowledged.

    `invalid` readings, spread evenly over `count`, are cut short (not JSON): poison
    records for trying a handler's failure path."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    sent = 0
    start = time.monotonic()
    try:
        if count is None:
            if duration_s is None:
                raise ValueError("give count, or rate and duration")
            count = int((rate or 10_000) * duration_s)
        source = readings(devices, seed, value_bytes)
        if invalid:
            source = _poisoned(source, every=max(1, count // (invalid + 1)), limit=invalid)
        # Bursts of at most 10 ms of traffic at a fixed rate, so latency is not made here.
        step = 2000 if not rate else max(1, min(2000, int(rate / 100)))
        pending: list[asyncio.Future[object]] = []
        while sent < count:
            chunk = list(islice(source, min(step, count - sent)))
            pending += [await producer.send(topic, value, key=key) for key, value in chunk]
            sent += len(chunk)
            if len(pending) >= 10_000:  # acks in bulk: pacing must not wait out each linger
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
