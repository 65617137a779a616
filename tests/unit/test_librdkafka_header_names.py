"""A header name that is not UTF-8, on librdkafka: read once, never again.

confluent-kafka's `Message.headers()` raises SystemError for such a message once, then
returns a cached list holding a NULL, which crashes the process when touched (measured
on the real broker: `tests/integration/test_kafka_header_names.py`). The fake message
here behaves so, except that its second read fails the test instead of the process.
"""

from __future__ import annotations

import pytest

from worker.lambda_compat.events import kafka_event
from worker.sources.kafka import librdkafka_records
from worker.sources.kafka.librdkafka_records import LibrdkafkaRecord


class FakeMessage:
    """The parts of confluent-kafka's `Message` the record reads."""

    def __init__(self, offset: int, bad: bool) -> None:
        self._offset, self._bad, self.reads = offset, bad, 0

    def headers(self) -> list[tuple[str, bytes]] | None:
        self.reads += 1
        if not self._bad:
            return [("ok", b"v")]
        if self.reads == 1:
            raise SystemError("<method 'headers'> returned a result with an exception set")
        raise AssertionError("read again: confluent-kafka returns a list holding a NULL here")

    def value(self) -> bytes:
        return b"{}"

    def key(self) -> bytes | None:
        return None

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1000 + self._offset)


@pytest.fixture
def fake_client(monkeypatch):
    """The column read of fake messages as of real ones; no failure seen yet."""
    monkeypatch.setattr(librdkafka_records, "_HEADERS", FakeMessage.headers)
    monkeypatch.setattr(librdkafka_records, "_OFFSET", FakeMessage.offset)
    monkeypatch.setattr(librdkafka_records, "_TIMESTAMP", FakeMessage.timestamp)
    monkeypatch.setattr(librdkafka_records, "_KEY", FakeMessage.key)
    monkeypatch.setattr(librdkafka_records, "_TOPIC", FakeMessage.topic)
    monkeypatch.setattr(librdkafka_records, "_PARTITION", FakeMessage.partition)
    monkeypatch.setattr(librdkafka_records, "_unreadable", 0)


def records(bad: int, n: int = 4) -> list[LibrdkafkaRecord]:
    return [LibrdkafkaRecord(FakeMessage(i, i == bad)) for i in range(n)]  # type: ignore[arg-type]


def test_the_lambda_event_reads_a_bad_message_once_and_gives_it_no_headers(fake_client, caplog):
    batch = records(bad=1)
    for _ in range(2):  # a retry builds the event again
        event = kafka_event(batch, ["b:9092"])
        assert [r["headers"] for r in event["records"]["t-0"]] == [
            [{"ok": [118]}],
            [],
            [{"ok": [118]}],
            [{"ok": [118]}],
        ]
    assert batch[1].headers == () and batch[1]._message.reads == 1
    assert "event=record_headers_unreadable partition=t-0 offset=1" in caplog.text


def test_a_record_read_by_the_handler_first_then_by_the_dead_letter_writer(fake_client):
    batch = records(bad=0)
    assert batch[0].headers == ()  # the handler's read
    assert batch[0].headers == () and batch[0]._message.reads == 1  # the DLQ writer's
    event = kafka_event(batch, ["b:9092"])  # no message read again, as one has failed
    assert [r["headers"] for r in event["records"]["t-0"]][:2] == [[], [{"ok": [118]}]]
    assert batch[0]._message.reads == 1
