"""The memory budget on the real broker: the client's fetch limits shrink with it, and a
record larger than a partition's share (and than a whole fetch) still gets through."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    end_offsets,
    eventually,
    scrape,
    unique,
    write_config,
)
from worker.runtime.backpressure import PREFETCH_SHARE

pytestmark = pytest.mark.kafka
PARTITIONS = 8
BUDGET = 1024 * 1024  # the smallest allowed: a third for the client, ~43 KB a partition
SHARE = int(BUDGET * PREFETCH_SHARE)
BIG = 700_000  # under the broker's message.max.bytes (1 MiB), over every fetch limit
BIG_PARTITION = 3


async def fill(kafka: str, topic: str, big: bytes) -> dict[int, int]:
    await create_topic(kafka, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", max_request_size=2**20)
    await producer.start()
    try:
        sends = [await producer.send(topic, b"small %d" % i, partition=i % PARTITIONS)
                 for i in range(40)]  # fmt: skip
        sends.append(await producer.send(topic, big, partition=BIG_PARTITION))
        sends += [await producer.send(topic, b"after", partition=BIG_PARTITION) for _ in range(3)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return await end_offsets(kafka, topic, PARTITIONS)


def test_a_record_larger_than_the_partition_share_is_delivered_whole_and_committed(
    kafka: str, tmp_path: Path
):
    topic, group = unique("mem"), unique("g")
    big = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
    ends = asyncio.run(fill(kafka, topic, big))
    big_offset = ends[BIG_PARTITION] - 4
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"target": "sizing_handler:handle"},
        runtime={"memory_budget_bytes": BUDGET},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        port = worker.metrics_port
        fitted = worker.wait_for_log(
            rf"event=fetch_limits partitions={PARTITIONS} partition_bytes=(\d+) "
            r"request_bytes=(\d+)"
        )
        partition_bytes, request_bytes = int(fitted.group(1)), int(fitted.group(2))
        assert partition_bytes == SHARE // PARTITIONS < BIG  # the record is over both
        assert request_bytes == SHARE < BIG
        eventually(lambda: committed(kafka, group, topic) == ends, what="all committed")

        sized = (tmp_path / f"sized.{worker.pid}").read_text().splitlines()
        rows = [line.split(" ") for line in sized]
        big_rows = [r for r in rows if int(r[0]) == BIG_PARTITION and int(r[1]) == big_offset]
        assert big_rows == [[str(BIG_PARTITION), str(big_offset), str(BIG),
                             hashlib.sha256(big).hexdigest()]]  # fmt: skip
        offsets = sorted((int(p), int(o)) for p, o, *_ in rows)
        assert offsets == [(p, o) for p in range(PARTITIONS) for o in range(ends[p])]

        m = scrape(port)
        prefetch = (("part", "client_prefetch"), ("source", "kafka"))
        assert m[("worker_memory_bytes", prefetch)] == partition_bytes * PARTITIONS
        assert ("worker_memory_bytes", (("part", "pipeline_buffers"), ("source", "kafka"))) in m
        assert m[("process_resident_memory_bytes", ())] > 0
        worker.terminate()
        assert worker.wait() == 0
        assert not re.search(r"RecordTooLarge|record_too_large", worker.log())
    finally:
        worker.stop()


class _Listener:
    """Just enough of the worker to hold an assignment (the source contract's listener)."""

    def __init__(self, source: object) -> None:
        self.source = source
        self.assigned = asyncio.Event()
        self.tasks: list[asyncio.Task[object]] = []

    async def on_assigned(self, partitions) -> None:
        self.source.fit_prefetch(SHARE, len(partitions))  # what the worker's budget does
        self.assigned.set()

    async def on_revoked(self, partitions) -> None:
        return None

    async def on_lost(self, partitions) -> None:
        return None

    def spawn(self, coro, name: str) -> asyncio.Task[object]:
        self.tasks.append(asyncio.ensure_future(coro))
        return self.tasks[-1]


async def test_the_fitted_limits_reach_the_running_consumer(kafka: str):
    from worker.sources.kafka.config import KafkaSourceConfig
    from worker.sources.kafka.source import KafkaSource

    topic = unique("mem")
    await create_topic(kafka, topic, PARTITIONS)
    source = KafkaSource(KafkaSourceConfig(bootstrap_servers=[kafka], topics=[topic],
                                           group_id=unique("g")))  # fmt: skip
    listener = _Listener(source)
    await source.start(listener)
    try:
        await asyncio.wait_for(listener.assigned.wait(), 60)
        fetcher = source._consumer._fetcher  # aiokafka's, read for every fetch request
        assert fetcher._max_partition_fetch_bytes == SHARE // PARTITIONS
        assert fetcher._fetch_max_bytes == SHARE
    finally:
        for task in listener.tasks:
            task.cancel()
        await source.stop()
