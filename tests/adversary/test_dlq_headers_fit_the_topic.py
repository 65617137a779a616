"""The traceback header must not make a dead-letter record one the DLQ topic refuses.

`worker.error.traceback` (up to 8000 characters, more bytes when not ASCII)
came with every record and with the envelope that stands in for a record too
large for the topic. On a DLQ topic with a small `max.message.bytes` a record
that fitted before the header existed became an envelope, and the envelope,
carrying the same header, was refused as well: `destination_failed` on every
attempt, the partition held for ever. The traceback is now cut (its end kept)
to what the topic can hold, and the record goes whole when it then fits.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.kafka_helpers import committed_offsets, create_topic, unique
from tests.integration.test_kafka_failures import config, read_all, running
from worker.destinations.kafka import HEADER_PREFIX

pytestmark = pytest.mark.kafka
DLQ_MAX_MESSAGE_BYTES = 6000


def deep(depth: int) -> None:
    """A handler's long traceback: two functions in turn, so no frames are folded."""
    if depth == 0:
        raise ValueError("gave up at the bottom ✗")  # not ASCII: more bytes than characters
    deeper(depth - 1)


def deeper(depth: int) -> None:
    deep(depth)


async def test_a_long_traceback_is_cut_to_what_the_dlq_topic_holds(kafka: str, caplog) -> None:
    topic, dlq, group = unique("tb"), unique("tb-dlq"), unique("g")
    await create_topic(kafka, topic, 1)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={
            "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})])  # fmt: skip
    finally:
        await admin.close()
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"i": 0}', key=b"k0", partition=0)
    finally:
        await producer.stop()

    async def handler(batch) -> None:
        deep(60)

    cfg = config(kafka, topic, group, batching={"maximum_batching_window_ms": 0},
                 errors={"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}"})  # fmt: skip
    caplog.set_level(logging.WARNING)
    async with running(cfg, handler):
        while await committed_offsets(kafka, group, topic) != {0: 1}:
            assert "event=destination_failed" not in caplog.text, "the DLQ refused the record"
            await asyncio.sleep(0.05)
    (dead,) = await read_all(kafka, dlq)
    headers = dict(dead.headers)
    assert dead.value == b'{"i": 0}' and HEADER_PREFIX + "truncated" not in headers
    traceback = headers[HEADER_PREFIX + "error.traceback"].decode()  # whole characters
    assert traceback.endswith("ValueError: gave up at the bottom ✗\n")
    assert 0 < traceback.count(", in deeper\n") < 60  # its end: the frames that raised
