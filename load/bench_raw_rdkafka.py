"""The librdkafka ceiling: a bare confluent-kafka `consume(1000)` loop, three ways.

python -m load.bench_raw_rdkafka BOOTSTRAP TOPIC COUNT {noop|decode} OUT {sync|thread|aio} [gc]

- sync:   `consume(1000)` in a plain loop, no event loop (the ceiling the issue names);
- thread: the same call run on one thread of our own from an asyncio loop (uvloop), as
          the worker's librdkafka source does it;
- aio:    `confluent_kafka.aio.AIOConsumer.consume(1000)` (its thread pool, its locks).

Every mode commits the consumed positions after each call (asynchronously: the worker's
committer runs beside its fetches, not between them) and sets `fetch.queue.backoff.ms`
to the worker's 10 ms (librdkafka's 1000 ms default stalls the loop). The result is JSON:
records/s over the steady part (as `bench_raw`), and the process's CPU seconds (every
thread's, librdkafka's included) per million records.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import uvloop
from confluent_kafka import Consumer

from load.bench_raw import _steady
from worker.config import WorkerConfig
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.librdkafka_conf import FETCH_QUEUE_BACKOFF_MS, queue_kbytes

BATCH = 1000


def conf(bootstrap: str, topic: str) -> dict[str, Any]:
    d = KafkaSourceConfig(topics=[topic])  # the worker's defaults, so both fetch alike
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-raw-rd-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "queued.max.messages.kbytes": queue_kbytes(d),
        "fetch.max.bytes": d.fetch_max_bytes,
        "max.partition.fetch.bytes": d.max_partition_fetch_bytes,
        "fetch.wait.max.ms": d.fetch_max_wait_ms,
        "check.crcs": d.check_crcs,
    }


class Meter:
    """Counts records; times (wall and CPU) the steady part only."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.low, self.high = _steady()
        self.seen = self.n0 = 0
        self.t0 = self.c0 = 0.0

    def add(self, messages: list[Any], work: str) -> None:
        if not self.t0 and self.seen >= self.count * self.low:
            self.t0, self.c0, self.n0 = time.perf_counter(), time.process_time(), self.seen
        if work == "decode":
            loads = orjson.loads
            for m in messages:
                loads(m.value())
        self.seen += len(messages)

    @property
    def done(self) -> bool:
        return self.seen >= self.count * self.high

    def result(self) -> dict[str, float]:
        n = self.seen - self.n0
        return {
            "rate": n / (time.perf_counter() - self.t0),
            "cpu_s_per_m": (time.process_time() - self.c0) / n * 1e6,
        }


def run_sync(c: dict[str, Any], topic: str, meter: Meter, work: str) -> None:
    consumer = Consumer(c)
    consumer.subscribe([topic])
    try:
        while not meter.done:
            messages = consumer.consume(BATCH, 1.0)
            meter.add(messages, work)
            if messages:
                consumer.commit(asynchronous=True)
    finally:
        consumer.close()


async def run_thread(c: dict[str, Any], topic: str, meter: Meter, work: str) -> None:
    loop, pool = asyncio.get_running_loop(), ThreadPoolExecutor(1)
    consumer = Consumer(c)
    consumer.subscribe([topic])
    try:
        while not meter.done:
            messages = await loop.run_in_executor(pool, consumer.consume, BATCH, 1.0)
            meter.add(messages, work)
            if messages:
                consumer.commit(asynchronous=True)
    finally:
        await loop.run_in_executor(pool, consumer.close)


async def run_aio(c: dict[str, Any], topic: str, meter: Meter, work: str) -> None:
    from confluent_kafka.aio import AIOConsumer

    consumer = AIOConsumer(c)
    await consumer.subscribe([topic])
    try:
        while not meter.done:
            messages = await consumer.consume(BATCH, 1.0)
            meter.add(messages, work)
            if messages:
                await consumer.commit(asynchronous=True)
    finally:
        await consumer.close()


def main(bootstrap: str, topic: str, count: int, work: str, mode: str) -> dict[str, float]:
    meter, c = Meter(count), conf(bootstrap, topic)
    if mode == "sync":
        run_sync(c, topic, meter, work)
    elif mode == "thread":
        uvloop.run(run_thread(c, topic, meter, work))
    else:
        uvloop.run(run_aio(c, topic, meter, work))
    return meter.result()


if __name__ == "__main__":
    b, t, n, w, o, m = sys.argv[1:7]
    if sys.argv[7:] == ["gc"]:
        from worker.runtime.run import tune_gc

        tune_gc(WorkerConfig.model_validate({"source": {"topics": [t]}}))
    Path(o).write_bytes(orjson.dumps(main(b, t, int(n), w, m)))
