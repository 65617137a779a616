"""`worker dlq` collected every entry of a DLQ topic in one list (each with its
traceback, up to 8000 characters) before printing a line: on a DLQ of millions
of records it filled the memory of the machine listing them. Entries are now
printed as they are read, so what it holds does not grow with the topic."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import ROOT, create_topic, unique

pytestmark = pytest.mark.kafka
RECORDS = 6000
TRACEBACK = "Traceback (most recent call last):\n" + "  File x\n" * 800  # 8 kB each

MEASURE = """
import sys, tracemalloc
from worker.cli import main
tracemalloc.start()
code = main(sys.argv[1:])
print(tracemalloc.get_traced_memory()[1], code, file=sys.stderr)
"""


async def fill(kafka: str, topic: str) -> None:
    await create_topic(kafka, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=20)
    await producer.start()
    try:
        headers = [("worker.error.type", b"ValueError"),
                   ("worker.error.traceback", TRACEBACK.encode())]  # fmt: skip
        sends = [await producer.send(topic, b"v", key=b"k%d" % i, headers=headers, partition=0)
                 for i in range(RECORDS)]  # fmt: skip
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def test_listing_a_large_dlq_topic_holds_a_bounded_amount(kafka: str) -> None:
    topic = unique("big-dlq")
    asyncio.run(fill(kafka, topic))
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, "dlq", "--from", f"kafka://{topic}", "--bootstrap", kafka],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )  # fmt: skip
    peak, code = result.stderr.split()[-2:]
    assert code == "0", result.stderr
    assert result.stdout.splitlines()[-1] == f"{RECORDS} records"
    data = RECORDS * len(TRACEBACK)
    assert int(peak) < data / 2, f"peak {int(peak) / 1e6:.1f} MB for {data / 1e6:.1f} MB of records"
