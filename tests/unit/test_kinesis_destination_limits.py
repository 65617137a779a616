"""PutRecords calls stay within AWS's limits, which emulators do not enforce."""

import pytest

from worker.destinations.base import DestinationError, FailureEvent
from worker.destinations.kinesis import MAX_CALL_BYTES, calls, entries
from worker.testing import make_batch


def entry(size: int) -> dict:
    return {"Data": b"x" * size, "PartitionKey": "k"}


def test_at_most_500_entries_per_call():
    sizes = [len(c) for c in calls([entry(10)] * 1201)]
    assert sizes == [500, 500, 201]


def test_at_most_5_mib_per_call():
    items = [entry(1024 * 1024 - 100)] * 12
    split = list(calls(items))
    assert all(sum(len(e["Data"]) + 1 for e in c) <= MAX_CALL_BYTES for c in split)
    assert [len(c) for c in split] == [5, 5, 2]


def test_a_record_over_1_mib_goes_as_a_counted_truncated_envelope():
    """The first version refused it on every attempt: the partition retried for ever."""
    import orjson

    batch = make_batch([b"y" * (1024 * 1024)], keys=[b"k"])
    event = FailureEvent("RetryAttemptsExhausted", "memory", "t-0", batch.records, 1)
    truncated: list = []
    (item,) = entries(event, truncated.append)
    envelope = orjson.loads(item["Data"])
    assert len(item["Data"]) < 64 * 1024 and truncated == list(batch.records)
    assert envelope["truncated"] is True and envelope["original_bytes"] == 1024 * 1024
    assert envelope["data"] is None and envelope["position"] == "0"
    assert envelope["condition"] == "RetryAttemptsExhausted"


def test_the_envelope_keeps_the_records_headers_base64():
    import base64

    import orjson

    from worker.sources.memory import MemoryRecord

    record = MemoryRecord("t", 0, 7, b"k", b"v", 1, (("trace", b"\x00\xff"), ("empty", b"")))
    event = FailureEvent("RetryAttemptsExhausted", "kafka", "t-0", [record], 1)
    (item,) = entries(event)
    envelope = orjson.loads(item["Data"])
    assert envelope["headers"] == [["trace", base64.b64encode(b"\x00\xff").decode()], ["empty", ""]]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_kinesis(monkeypatch):
    """A real aiobotocore client pointed at a closed loopback port: EndpointConnectionError."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    from worker.destinations.kinesis import KinesisDestination

    return KinesisDestination("dlq", "us-east-1", f"http://127.0.0.1:{closed_port()}", 5)


async def test_an_unreachable_kinesis_destination_is_a_destination_error(unreachable_kinesis):
    batch = make_batch([b"v"], keys=[b"k"])
    event = FailureEvent("RetryAttemptsExhausted", "memory", "t-0", batch.records, 1)
    await unreachable_kinesis.start()
    try:
        with pytest.raises(DestinationError, match="EndpointConnectionError"):
            await unreachable_kinesis.send(event)
    finally:
        await unreachable_kinesis.stop()


async def test_while_kinesis_is_unreachable_the_partition_waits_and_retries(unreachable_kinesis):
    from worker.testing import MemoryBroker, running_worker, wait_until

    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"poison", partition=0)

    async def handler(batch):
        raise ValueError("poison")

    settings = {"errors": {"maximum_retry_attempts": 0}}
    async with running_worker(handler, broker, ["t"], settings,
                              destination=unreachable_kinesis) as w:  # fmt: skip
        failures = w.metrics.destination_failures.labels("memory", unreachable_kinesis.name)
        await wait_until(lambda: failures._value.get() >= 3 or w.exit_code != 0)
        assert w.exit_code == 0 and w.tasks.crashed is None
        assert broker.committed("test", "t", 0) is None  # nothing past it committed
