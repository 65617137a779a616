"""Writes records whose header name is not UTF-8, as a C or Go producer can (the protocol
does not check header names; aiokafka and confluent-kafka encode str names).

Run as `AIOKAFKA_NO_EXTENSIONS=1 python -m tests.integration.raw_header_names BOOTSTRAP
TOPIC N BAD`: aiokafka's pure-Python batch builder encodes each header name with its
`encode`, which a str subclass answers with raw bytes. Records are `{"i": n}`, each with
a header `ok`, the record BAD with a header named b"\\xff\\xfe-bad" instead.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaProducer


class RawName(str):
    """A header name that encodes to bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-bad"


async def produce(bootstrap: str, topic: str, n: int, bad: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(n):
            headers = [(RawName("bad"), b"v")] if i == bad else [("ok", b"v")]
            await producer.send_and_wait(topic, b'{"i": %d}' % i, partition=0, headers=headers)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(produce(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
