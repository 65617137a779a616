"""`worker dlq` on a file destination, and `--since` as `worker dlq` and `worker redrive` read
it: what redrive prints is accepted, a time that cannot be (unreadable, future) is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main
from worker.destinations.file import FileDestination
from worker.destinations.redrive import RedriveReport
from worker.destinations.topics import parse_since, shown_time
from worker.testing import MemoryBroker, running_worker, wait_until

NOW_S = 1_764_662_400.0  # 2025-12-02T08:00:00Z
POISON = {2, 5}


def test_since_accepts_epoch_seconds_iso_and_what_redrive_prints():
    assert parse_since("1764662000", NOW_S) == 1_764_662_000_000
    assert parse_since("1764662000.5", NOW_S) == 1_764_662_000_500
    assert parse_since("2025-12-02T07:00:00Z", NOW_S) == 1_764_658_800_000
    assert parse_since("2025-12-02T07:00:00", NOW_S) == 1_764_658_800_000  # no zone: UTC
    assert parse_since("2025-12-02T09:00:00+02:00", NOW_S) == 1_764_658_800_000
    report = RedriveReport()
    report.moved_one(1_764_662_000_123)
    assert report.next_since() == "timestamp_ms=1764662000124"
    assert parse_since(report.next_since(), NOW_S) == 1_764_662_000_124
    assert parse_since("timestamp_ms=1764662000123", NOW_S) == 1_764_662_000_123
    assert parse_since(shown_time(1_764_662_000_123), NOW_S) == 1_764_662_000_123


@pytest.mark.parametrize(
    "text, says",
    [
        ("yesterday", "not a time"),
        ("timestamp_ms=soon", "not a time"),
        ("2025-13-40", "not a time"),
        ("2025-12-03T00:00:00Z", "in the future"),
        (str(int(NOW_S * 1000)), "in the future"),  # milliseconds read as seconds
    ],
)
def test_since_refuses_what_cannot_be_a_time_or_is_in_the_future(text, says):
    with pytest.raises(ValueError, match=says) as caught:
        parse_since(text, NOW_S)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("command", ["redrive", "dlq"])
@pytest.mark.parametrize("since", ["yesterday", "2999-01-01T00:00:00Z"])
def test_an_impossible_since_is_one_error_line_and_exit_2(command, since, capsys):
    extra = ["--to", "kafka://t"] if command == "redrive" else []
    argv = [command, "--from", "kafka://dlq", *extra, "--since", since, "--bootstrap", "x:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --since ")


async def poisoned(batch) -> None:
    for r in batch.records:
        if int(r.value) in POISON:
            raise ValueError(f"poison reading {int(r.value)}")


async def dead_letter_to_file(tmp_path: Path) -> Path:
    path = tmp_path / "dlq.jsonl"
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(8):
        broker.produce("t", b"%d" % i, key=b"dev-%d" % i)
    settings = {"errors": {"maximum_retry_attempts": 1, "on_failure": f"file://{path}"}}
    destination = FileDestination(str(path))
    async with running_worker(poisoned, broker, ["t"], settings, destination=destination):
        await wait_until(lambda: broker.committed("test", "t", 0) == 8)
    return path


async def test_dlq_lists_exactly_the_records_of_a_file_destination(tmp_path, capsys):
    path = await dead_letter_to_file(tmp_path)
    assert main(["dlq", "--from", f"file://{path}", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["source_position"], r["key"]) for r in rows] == [
        (f"t-0@{i}", f"dev-{i}") for i in sorted(POISON)
    ]
    for r in rows:
        assert r["condition"] == "RetryAttemptsExhausted" and r["attempts"] == 2
        assert r["error_type"] == "ValueError" and r["error_message"].startswith("poison")
        assert r["at"].startswith("tests/unit/test_dlq_listing.py:")
        assert "Traceback" in r["traceback"]
    assert main(["dlq", "--from", f"file://{path}", "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["failed", "at"]
    assert "t-0@2" in table[1] and "dev-2" in table[1] and "ValueError: poison" in table[1]
    assert table[-1] == "1 records"
    later = shown_time(max(r["failed_at_ms"] for r in rows) + 1)
    assert main(["dlq", "--from", f"file://{path}", "--since", later, "--json"]) == 0
    assert capsys.readouterr().out == ""


def test_dlq_says_what_is_wrong_with_its_source(tmp_path, capsys):
    assert main(["dlq", "--from", f"file://{tmp_path}/none.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["dlq", "--from", "s3://bucket"]) == 2
    assert "expected kafka://TOPIC or file://PATH" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text("not json\n")
    assert main(["dlq", "--from", f"file://{tmp_path}/x.jsonl"]) == 2
    assert "x.jsonl:1: not a dead-letter event line" in capsys.readouterr().err


async def test_a_sequence_number_past_64_bits_is_dead_lettered_to_a_file_and_listed(
    tmp_path, capsys
):
    """Kinesis and DynamoDB sequence numbers do not fit a JSON number orjson writes: they
    are written as strings (before, the write failed and the partition retried it forever)."""
    from datetime import UTC, datetime

    from worker.destinations.base import FailureEvent
    from worker.sources.kinesis.record import KinesisRecord

    sequence = "49590338271490256608559692538361571095921575989136588898"
    record = KinesisRecord.from_api("telemetry", "shardId-000000000000", {
        "ApproximateArrivalTimestamp": datetime(2026, 12, 2, tzinfo=UTC),
        "PartitionKey": "dev-1", "Data": b"{}", "SequenceNumber": sequence,
    })  # fmt: skip
    path = tmp_path / "dlq.jsonl"
    destination = FileDestination(str(path))
    await destination.start()
    await destination.send(FailureEvent("RetryAttemptsExhausted", "kinesis",
                                        "shardId-000000000000", [record], 3))  # fmt: skip
    document = json.loads(path.read_text())
    assert document["first_offset"] == document["records"][0]["offset"] == sequence
    assert main(["dlq", "--from", f"file://{path}", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["source_position"] == f"shardId-000000000000@{sequence}"
