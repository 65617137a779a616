"""A topic written by a transactional producer, on the real broker.

Every committed transaction ends with a control record (the commit marker) that takes
an offset but is never delivered. After the last record is handled and committed
(offset N+1), the partition's high watermark is N+2: the source reports a lag of 1 for
ever, the watchdog reads it as 'records waiting' with a checkpoint that cannot move, and
an idle, fully caught-up worker exits 3 after stall_timeout_s (and its successor too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed_offsets,
    create_topic,
    end_offsets,
    eventually,
    read_handled,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


async def produce_in_a_transaction(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(count):
                await producer.send(topic, b'{"seq": %d}' % i, key=b"k", partition=0)
    finally:
        await producer.stop()


def test_a_caught_up_worker_on_a_transactional_topic_is_not_stalled(kafka: str, tmp_path: Path):
    topic, group = unique("tx"), unique("g")
    asyncio.run(create_topic(kafka, topic, 1))
    asyncio.run(produce_in_a_transaction(kafka, topic, 20))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        runtime={"stall_timeout_s": 3, "shutdown_timeout_s": 1, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log(r"event=assigned partitions=\S+")
        eventually(lambda: len(read_handled(tmp_path).get(0, [])) == 20, 30, "all handled")
        eventually(lambda: asyncio.run(committed_offsets(kafka, group, topic)).get(0) == 20, 30,
                   "all committed")  # fmt: skip
        ends = asyncio.run(end_offsets(kafka, topic, 1))
        print("end offset", ends, "committed 20")
        worker.keeps_running(8)  # well past stall_timeout_s, nothing left to do
    finally:
        worker.terminate()
        code = worker.wait(30)
        worker.stop()
    assert code == 0, worker.log()[-3000:]
