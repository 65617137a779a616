"""concurrency = "process": same results as in-process, and a dying child is survived."""

import os
from pathlib import Path

import pytest

from tests.unit.test_failure_policy import RecordingDestination
from worker.config import HandlerConfig
from worker.pipeline.invoker import HandlerLoadError, Invoker
from worker.pipeline.process_pool import pack, unpack
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until


def results(directory: Path) -> set[str]:
    return {line for path in directory.glob("out.*") for line in path.read_text().splitlines()}


def broker_with_bad_records() -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(300):
        value = b"bad-%d" % i if i % 37 == 0 else b"reading-%d" % i
        broker.produce("t", value, key=b"k%d" % (i % 11))
    return broker


async def run(directory: Path, concurrency: str, monkeypatch) -> list[int]:
    monkeypatch.setenv("RESULT_DIR", str(directory))
    dlq = RecordingDestination()
    settings = {
        "handler": {
            "target": "tests.unit.process_handlers:digest",
            "concurrency": concurrency,
            "processes": 2,
        },
        "batching": {"batch_size": 25},
        "errors": {"maximum_retry_attempts": 0, "partial_retry": "failed_only"},
    }
    broker = broker_with_bad_records()
    from tests.unit.process_handlers import digest

    async with running_worker(digest, broker, ["t"], settings, destination=dlq):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=60)
    return sorted(r.offset for e in dlq.events for r in e.records)


async def test_process_pool_results_equal_the_in_process_results(tmp_path, monkeypatch):
    (tmp_path / "threads").mkdir()
    (tmp_path / "procs").mkdir()
    dead_in_threads = await run(tmp_path / "threads", "thread", monkeypatch)
    dead_in_procs = await run(tmp_path / "procs", "process", monkeypatch)
    assert results(tmp_path / "procs") == results(tmp_path / "threads")
    assert len(results(tmp_path / "threads")) == 300  # every record's digest, once
    assert dead_in_procs == dead_in_threads and len(dead_in_procs) == 9
    assert all(path.name != f"out.{os.getpid()}" for path in (tmp_path / "procs").glob("out.*"))


async def test_a_child_that_dies_fails_its_batch_which_is_retried_on_a_new_pool(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("RESULT_DIR", str(tmp_path))
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for _ in range(20):
        broker.produce("t", b"x", partition=0)
    settings = {
        "handler": {
            "target": "tests.unit.process_handlers:crash_once",
            "concurrency": "process",
            "processes": 1,
        },
        "batching": {"batch_size": 10},
        "errors": {"bisect_batch_on_function_error": False},
    }
    from tests.unit.process_handlers import crash_once

    async with running_worker(crash_once, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=60)
        errors = w.metrics.batches.labels("memory", "t-0", "error")._value.get()
    assert (tmp_path / "crashed").exists()
    handled = sorted(int(line.split()[1]) for line in results(tmp_path))
    assert handled == list(range(20))
    assert errors == 1
    assert "event=handler_process_died" in caplog.text


def test_records_cross_to_a_child_as_flat_lists_and_come_back_whole():
    batch = make_batch([b"a", None], keys=[b"k", None], topic="tel", partition=3, first_offset=7)
    packed = pack(batch)
    assert all(isinstance(column, list) for column in packed[4:])
    again = unpack(packed)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in again.records] == [
        ("tel", 3, 7, b"k", b"a"),
        ("tel", 3, 8, None, None),
    ]


def test_an_async_handler_cannot_run_in_processes():
    async def handler(batch):
        return None

    with pytest.raises(HandlerLoadError, match="plain"):
        Invoker(handler, HandlerConfig(concurrency="process"), processes=object())  # type: ignore[arg-type]
