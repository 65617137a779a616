"""`worker redrive` sent a truncated envelope back like any record: the source topic got
our JSON (the error, the first 4 kB of the value in base64) in place of the reading, and
the fixed handler took it for one. Envelopes are now skipped, counted and named."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import create_topic, unique
from tests.integration.test_kafka_failures import read_all
from worker.cli import main

pytestmark = pytest.mark.kafka


def test_redrive_moves_records_and_skips_envelopes(kafka: str, capsys) -> None:
    dlq, target = unique("dlq"), unique("back")
    envelope = orjson.dumps({"truncated": True, "position": 7, "value_prefix": "eHh4"})

    async def fill() -> None:
        await create_topic(kafka, dlq, 1)
        await create_topic(kafka, target, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        try:
            base = [("origin", b"sensor"), ("worker.source.offset", b"6")]
            await producer.send_and_wait(dlq, b'{"i": 6}', key=b"k6", headers=base)
            truncated = [("worker.source.offset", b"7"), ("worker.truncated", b"true")]
            await producer.send_and_wait(dlq, envelope, key=b"k7", headers=truncated)
        finally:
            await producer.stop()

    asyncio.run(fill())
    argv = [
        "redrive",
        "--from",
        f"kafka://{dlq}",
        "--to",
        f"kafka://{target}",
        "--bootstrap",
        kafka,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"moved 1 records from kafka://{dlq}" in out
    assert "skipped 1 truncated envelopes" in out and f"{dlq}-0@1" in out
    moved = asyncio.run(read_all(kafka, target))
    assert [(r.key, r.value, list(r.headers)) for r in moved] == [
        (b"k6", b'{"i": 6}', [("origin", b"sensor")])
    ]
