"""A record that always fails, with the default settings, on the memory source: the worker says
so at start, and status, `worker status` and the metrics show the partition retrying it."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import orjson
import pytest

from worker.cli import main
from worker.handling.raised_at import raised_at
from worker.observe.errors import RecentErrors
from worker.observe.metrics import Metrics
from worker.testing import MemoryBroker, running_worker, wait_until

POISON_OFFSET = 3


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read()


def samples(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sorted(s.labels.values())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def parse_reading(value: bytes) -> dict:
    return orjson.loads(value)  # the poison is not JSON: this line raises


async def poison_handler(batch) -> None:
    for record in batch.records:
        parse_reading(record.value)


async def test_a_poison_record_with_the_defaults_is_warned_of_and_shown_retrying(caplog, capsys):
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(10):
        broker.produce("t", b"not json" if i == 2 * POISON_OFFSET else b"{}", partition=i % 2)
    metrics = Metrics()
    settings = {"metrics": {"enabled": True, "listen": "127.0.0.1:0"}}
    caplog.set_level(logging.WARNING)
    async with running_worker(poison_handler, broker, ["t"], settings, metrics=metrics) as w:
        await wait_until(lambda: w.endpoints is not None and w.endpoints.port is not None)
        await wait_until(lambda: any(p.retrying and p.retrying[0].attempts >= 3
                                     for p in w.partition_stats()))  # fmt: skip
        port = w.endpoints.port
        status = json.loads(await asyncio.to_thread(get, port, "/status.json"))
        page = (await asyncio.to_thread(get, port, "/")).decode()
        metrics_text = (await asyncio.to_thread(get, port, "/metrics")).decode()
        assert await asyncio.to_thread(main, ["status", "--url", f"http://127.0.0.1:{port}"]) == 0
        await wait_until(lambda: broker.committed("test", "t", 1) == 5)  # the other goes on
        stats = {p.label: p for p in w.partition_stats()}
    warnings = [r.getMessage() for r in caplog.records if "event=config_warning" in r.getMessage()]
    assert len(warnings) == 1
    assert ("retries are unlimited and there is no on-failure destination: one bad record "
            "stops its partition") in warnings[0]  # fmt: skip
    assert status["ready"] is True  # the worker is fine; one partition is not
    by_label = {p["partition"]: p for p in status["partitions"]}
    retrying = by_label["t-0"]["retrying"]
    assert retrying["position"] == POISON_OFFSET and retrying["records"] == 1
    assert retrying["attempts"] >= 3
    assert retrying["error"].startswith("JSONDecodeError: ")
    assert retrying["since"].endswith("Z") and retrying["for_s"] >= 0
    assert by_label["t-1"]["retrying"] is None
    assert stats["t-0"].retrying and not stats["t-1"].retrying
    assert 'worker_partition_retrying{partition="t-0",source="memory"} 1.0' in metrics_text
    assert 'worker_partition_retrying{partition="t-1",source="memory"} 0.0' in metrics_text
    assert "worker_partition_retry_attempts" in metrics_text
    assert "p.retrying" in page and "retrying position" in page  # rendered by the page's script
    out = capsys.readouterr().out
    assert f"t-0 retrying position {POISON_OFFSET} (1 records): " in out
    assert "JSONDecodeError" in out
    # The poison's error is one group with its count, not one line per attempt.
    errors = [e for e in status["last_errors"] if e["partition"] == "t-0"]
    assert [e["position"] for e in errors if e["count"] > 1] == [str(POISON_OFFSET)]
    # The partition left with the worker: its gauges went with it.
    assert samples(metrics, "worker_partition_retrying") == {}
    assert samples(metrics, "worker_partition_retry_attempts") == {}


async def test_a_retried_record_that_then_succeeds_is_no_longer_shown_retrying():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for _ in range(3):
        broker.produce("t", b"{}")
    failures = 3

    async def flaky(batch) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("database away")

    metrics = Metrics()
    seen: list[int] = []
    async with running_worker(flaky, broker, ["t"], metrics=metrics) as w:
        await wait_until(lambda: broker.committed("test", "t", 0) == 3)
        seen = [len(p.retrying) for p in w.partition_stats()]
        gauges = samples(metrics, "worker_partition_retrying")
    assert seen == [0]
    assert gauges == {("memory", "t-0"): 0.0}


def test_last_errors_group_by_record_and_error_with_count_and_first_and_last_seen():
    errors = RecentErrors(keep=3)
    for i in range(10):
        errors.add("t-0", "17", "ValueError: bad reading", now=1000.0 + i)
    errors.add("t-1", "4", "KeyError: 'temp'", now=2000.0)
    errors.add("t-0", "17", "TimeoutError: slow", now=2001.0)  # same record, another error
    errors.add("t-0", "18", "ValueError: bad reading", now=2002.0)  # another record
    shown = errors.snapshot()
    assert [(e["partition"], e["position"], e["error"], e["count"]) for e in shown] == [
        ("t-1", "4", "KeyError: 'temp'", 1),
        ("t-0", "17", "TimeoutError: slow", 1),
        ("t-0", "18", "ValueError: bad reading", 1),
    ]  # the ten failures of one record took one place; the oldest group went first
    errors.add("t-1", "4", "KeyError: 'temp'", now=3000.0)
    again = errors.snapshot()[-1]
    assert (again["position"], again["count"]) == ("4", 2)
    assert again["first_seen"] == "1970-01-01T00:33:20Z"
    assert again["last_seen"] == again["at"] == "1970-01-01T00:50:00Z"


def test_the_raising_frame_is_the_innermost_one_in_the_handlers_own_code():
    try:
        parse_reading(b"not json")
    except ValueError as exc:
        where = raised_at(exc)
    line = parse_reading.__code__.co_firstlineno + 1
    assert where == f"tests/unit/test_poison_record_is_seen.py:{line}"  # not orjson's, not ours
    assert raised_at(ValueError("never raised")) == ""


def test_the_raising_frame_falls_back_to_the_innermost_when_no_user_code_raised():
    try:
        json.loads("{")
    except ValueError as exc:
        outer = raised_at(exc)
        inner = raised_at(exc.with_traceback(exc.__traceback__.tb_next))
    assert outer.startswith("tests/unit/test_poison_record_is_seen.py:")
    assert inner.rsplit(":", 1)[0].endswith("json/decoder.py")


@pytest.mark.parametrize("level", [logging.WARNING, logging.DEBUG])
async def test_invocation_failed_says_where_and_the_traceback_is_logged_once_per_error(
    caplog, level
):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"not json")
    caplog.set_level(level, logger="worker.failures")
    async with running_worker(poison_handler, broker, ["t"]) as w:
        await wait_until(lambda: any(p.retrying and p.retrying[0].attempts >= 4
                                     for p in w.partition_stats()))  # fmt: skip
    line = parse_reading.__code__.co_firstlineno + 1
    failed = [r.getMessage() for r in caplog.records if "event=invocation_failed" in r.getMessage()]
    assert len(failed) >= 4
    assert all(f"at=tests/unit/test_poison_record_is_seen.py:{line}" in m for m in failed)
    tracebacks = [r for r in caplog.records if "event=invocation_traceback" in r.getMessage()]
    assert [r.levelno for r in tracebacks if r.levelno == logging.WARNING] == [logging.WARNING]
    assert "Traceback (most recent call last)" in tracebacks[0].getMessage()
    assert "parse_reading" in tracebacks[0].getMessage()
    if level == logging.DEBUG:  # the repeats, for whoever asks for them
        assert len(tracebacks) == len(failed)
    else:
        assert len(tracebacks) == 1


def test_the_raising_frame_of_a_handler_process_is_read_from_its_traceback_text():
    error = ValueError("bad reading")
    error.traceback = (  # as pebble hands back an exception raised in a handler process
        "Traceback (most recent call last):\n"
        f'  File "{raised_at.__code__.co_filename}", line 10, in call\n'
        '  File "handlers/iot.py", line 42, in handle\n'
        f'  File "{json.__file__}", line 346, in loads\n'
        "ValueError: bad reading\n"
    )
    assert raised_at(error) == "handlers/iot.py:42"


@pytest.mark.parametrize(
    "errors, destination, says",
    [
        ({}, None, "retries are unlimited and there is no on-failure destination"),
        ({}, "file", "retries are unlimited: one bad record stops its partition"),
        ({"maximum_retry_attempts": 2}, None, "records that run out are dropped"),
        ({"maximum_record_age_s": 60}, None, "records that run out are dropped"),
        ({"maximum_retry_attempts": 2}, "file", None),
    ],
)
def test_the_start_up_warning_says_what_the_failure_settings_do_to_a_bad_record(
    caplog, tmp_path, errors, destination, says
):
    from worker.destinations.file import FileDestination
    from worker.runtime.build import warn_about_failures
    from worker.testing import memory_config

    caplog.set_level(logging.WARNING)
    dest = FileDestination(str(tmp_path / "dlq.jsonl")) if destination else None
    warn_about_failures(memory_config({"errors": errors}), dest)
    lines = [r.getMessage() for r in caplog.records]
    if says is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("event=config_warning ")
        assert says in lines[0]


def test_bisecting_around_one_poison_record_is_one_group_showing_the_record():
    """0..99, 0..49, 25..49, ... 37 overlap: one group; a second poison record, apart."""
    errors = RecentErrors(keep=3)
    for n, position in enumerate(["0..99", "0..49", "25..49", "25..37", "37", "37", "37"]):
        errors.add("t-0", position, "ValueError: bad reading", now=1000.0 + n)
    errors.add("t-0", "50..99", "ValueError: bad reading", now=2000.0)
    errors.add("t-0", "80", "ValueError: bad reading", now=2001.0)
    errors.add("t-1", "37", "ValueError: bad reading", now=2002.0)  # another partition
    shown = [(e["partition"], e["position"], e["count"]) for e in errors.snapshot()]
    assert shown == [("t-0", "37", 7), ("t-0", "80", 2), ("t-1", "37", 1)]
