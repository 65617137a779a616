"""`worker dlq` on what someone else wrote: one error line or a listing, never a traceback.

A file line that was JSON but not of an event's shape (`error` a string,
`records` holding numbers, `failed_at_ms` a string with `--since`) printed a
Python traceback; a Kafka record whose `worker.failed_at_ms` header held a
digit `int()` does not read ("²") ended the whole listing in an error.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import create_topic, unique
from worker.cli import main

GOOD = {"failed_at_ms": 5, "error": {"type": "E"}, "records": [{"offset": 1}]}


@pytest.mark.parametrize(
    "line",
    [
        '{"error": "ValueError", "records": [{"offset": 1}]}',
        '{"error": {}, "records": [1, 2]}',
        '{"error": {}, "records": {"offset": 1}}',
        '{"failed_at_ms": 5000, "error": {}, "records": [{"key": "not base64!"}]}',
        '{"failed_at_ms": 5000, "error": {}, "records": [{"key": 42}]}',
        "[1, 2]",
    ],
)
@pytest.mark.parametrize("since", [None, "1"])
def test_a_line_not_of_an_events_shape_is_one_error_line(tmp_path, capsys, line, since):
    path = tmp_path / "dlq.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    extra = ["--since", since] if since else []
    assert main(["dlq", "--from", f"file://{path}", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:2: "), err


def test_odd_field_types_in_an_event_are_listed_not_raised(tmp_path, capsys):
    path = tmp_path / "dlq.jsonl"
    odd = {"failed_at_ms": "yesterday", "attempts": {"n": 1}, "condition": 7,
           "error": {"type": 5, "message": None}, "records": [{"offset": 3}]}  # fmt: skip
    path.write_text(json.dumps(odd) + "\n")
    assert main(["dlq", "--from", f"file://{path}"]) == 0
    assert main(["dlq", "--from", f"file://{path}", "--since", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "0 records" and "1 records" in out


@pytest.mark.kafka
def test_records_of_someone_elses_topic_are_listed(kafka: str, capsys):
    topic = unique("foreign")

    async def produce() -> None:
        await create_topic(kafka, topic, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"\xff\xfe", key=b"\xff", partition=0)
            await producer.send_and_wait(topic, None, key=b"k", partition=0)
            headers = [("worker.failed_at_ms", "²".encode()), ("worker.attempts", b"\xff"),
                       ("worker.error.type", b"\xc3(")]  # fmt: skip
            await producer.send_and_wait(topic, b"v", headers=headers, partition=0)
        finally:
            await producer.stop()

    asyncio.run(produce())
    assert main(["dlq", "--from", f"kafka://{topic}", "--bootstrap", kafka, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["dlq_position"] for r in rows] == [f"{topic}-0@{i}" for i in range(3)]
    assert rows[0]["key"] == "\\xff" and rows[0]["source_position"] == "?-?@?"
    assert rows[2]["failed_at_ms"] is None and rows[2]["attempts"] is None
    assert main(["dlq", "--from", f"kafka://{topic}", "--bootstrap", kafka]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 records"
