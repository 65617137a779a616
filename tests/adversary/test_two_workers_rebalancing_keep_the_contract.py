"""Two in-process workers sharing a group on the real broker, rebalancing while records
flow, handlers failing now and then: nothing committed before handled, nothing lost,
per-key order kept. Faults: the handler raises on the first attempt of some records; the
workers join and leave (request_exit) mid-stream."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import committed_offsets, create_topic, end_offsets, unique
from tests.integration.test_kafka_failures import config
from worker.runtime.worker import Worker

pytestmark = pytest.mark.kafka
PARTITIONS = 4
KEYS = 23


async def test_two_workers_rebalancing_under_load_commit_only_handled_records(kafka: str):
    topic, group = unique("reb"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    rng = random.Random(11)
    handled: set[tuple[int, int]] = set()
    done: dict[str, set[int]] = defaultdict(set)
    violations: list[str] = []
    failed_once: set[tuple[int, int]] = set()

    async def handler(batch) -> None:
        await asyncio.sleep(rng.random() / 100)
        for r in batch.records:
            if r.offset % 97 == 5 and (r.partition, r.offset) not in failed_once:
                failed_once.add((r.partition, r.offset))
                raise RuntimeError("injected")
        for r in batch.records:
            key, n = r.key.decode(), int(r.value)
            missing = [m for m in range(n) if m not in done[key]]
            if missing:
                violations.append(f"{key} seq {n} before {missing[:3]}")
            done[key].add(n)
            handled.add((r.partition, r.offset))

    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 20, "maximum_batching_window_ms": 20},
        handler={"parallelization_factor": 2},
        source={"commit_interval_ms": 50, "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500},
        runtime={"rebalance_timeout_s": 5, "shutdown_timeout_s": 5},
    )  # fmt: skip
    stop = asyncio.Event()
    produced = {"n": 0}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5, acks="all")
        await producer.start()
        seq: dict[int, int] = defaultdict(int)
        try:
            while not stop.is_set():
                futures = []
                for _ in range(50):
                    k = rng.randrange(KEYS)
                    futures.append(await producer.send(topic, b"%d" % seq[k], key=b"k%d" % k))
                    seq[k] += 1
                await asyncio.gather(*futures)
                produced["n"] += 50
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()

    async def check_commits() -> None:
        while not stop.is_set():
            for p, off in (await committed_offsets(kafka, group, topic)).items():
                gap = [o for o in range(off) if (p, o) not in handled]
                if gap:
                    violations.append(f"committed p{p}@{off} before handling {gap[:3]}")
            await asyncio.sleep(0.1)

    def start() -> tuple[Worker, asyncio.Task]:
        w = Worker(cfg, handler=handler)
        return w, asyncio.create_task(w.serve())

    producer = asyncio.create_task(produce())
    checker = asyncio.create_task(check_commits())
    a, ta = start()
    await asyncio.sleep(2)
    b, tb = start()
    await asyncio.sleep(4)
    b.request_exit()
    assert await tb == 0
    await asyncio.sleep(1)
    b, tb = start()
    await asyncio.sleep(4)
    a.request_exit()
    assert await ta == 0
    await asyncio.sleep(2)
    stop.set()
    await producer
    ends = await end_offsets(kafka, topic, PARTITIONS)
    for _ in range(300):
        if await committed_offsets(kafka, group, topic) == ends:
            break
        await asyncio.sleep(0.1)
    b.request_exit()
    assert await tb == 0
    await checker
    print("produced", produced["n"], "ends", ends)
    assert not violations, violations[:5]
    assert await committed_offsets(kafka, group, topic) == ends
    assert handled == {(p, o) for p, end in ends.items() for o in range(end)}
