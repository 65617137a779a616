"""concurrency = "process": same results as in-process, and a dying child is survived."""

import os
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from tests.unit.test_failure_policy import RecordingDestination
from worker.config import HandlerConfig, WorkerConfig
from worker.handling.handler import HandlerLoadError
from worker.handling.invoker import Invoker
from worker.handling.process_pool import ChildSpec, ProcessPool, pack, unpack
from worker.lambda_compat.adapter import child_handler
from worker.lambda_compat.shapes import shape_of
from worker.records import Batch
from worker.sources.kafka.record import TRAITS as KAFKA
from worker.sources.kinesis.record import TRAITS as KINESIS
from worker.sources.kinesis.record import KinesisRecord
from worker.sources.memory import TRAITS as MEMORY
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
        errors = w.metrics.batches.labels("memory", "t-0", "error").value
    assert (tmp_path / "crashed").exists()
    handled = sorted(int(line.split()[1]) for line in results(tmp_path))
    assert handled == list(range(20))
    assert errors == 1
    assert "event=handler_process_died" in caplog.text


def test_records_cross_to_a_child_as_flat_lists_and_come_back_whole():
    batch = make_batch([b"a", None], keys=[b"k", None], topic="tel", partition=3, first_offset=7)
    packed = pack(batch, MEMORY)
    assert all(isinstance(column, list) for column in packed[0])
    again = unpack(packed, MEMORY)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in again.records] == [
        ("tel", 3, 7, b"k", b"a"),
        ("tel", 3, 8, None, None),
    ]


def test_an_async_handler_cannot_run_in_processes():
    async def handler(batch):
        return None

    with pytest.raises(HandlerLoadError, match="plain"):
        Invoker(handler, HandlerConfig(concurrency="process"), processes=object())  # type: ignore[arg-type]


def _kafka_records() -> list[ConsumerRecord]:
    # LOG_APPEND_TIME (1) and headers: what a flat copy of "common" fields would lose.
    return [
        ConsumerRecord(
            "tel",
            3,
            40 + i,
            1_700_000_000_000 + i,
            1,
            b"dev-%d" % i,
            b'{"t": 1}',
            None,
            5,
            8,
            [("trace", b"abc")],
        )
        for i in range(3)
    ]


def _kinesis_records() -> list[KinesisRecord]:
    sequence = "49590338271490256608559692538361571095921575989136588898"
    return [
        KinesisRecord(
            "tel",
            "shardId-000000000007",
            b"dev-%d" % i,
            b'{"t": 1}',
            str(int(sequence) + i),
            1_700_000_000_000 + i,
        )
        for i in range(3)
    ]


def _memory_records() -> list:
    return list(make_batch([b"a", b"b"], keys=[b"k", None], topic="tel", partition=1).records)


SOURCES = {
    "kafka": ({"kind": "kafka", "topics": ["tel"]}, KAFKA, _kafka_records),
    "kinesis": ({"kind": "kinesis", "stream_name": "tel"}, KINESIS, _kinesis_records),
    "memory": ({"kind": "memory"}, MEMORY, _memory_records),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
async def test_the_event_built_in_a_handler_process_equals_the_one_built_in_the_worker(source):
    settings, traits, make_records = SOURCES[source]
    config = WorkerConfig.model_validate(
        {"source": settings, "handler": {"style": "lambda", "concurrency": "process",
                                         "target": "tests.unit.process_handlers:echo_event"}}
    )  # fmt: skip
    records = make_records()
    window = {"window": {"start": "a", "end": "b"}, "state": {"n": 1}}
    batch = Batch(records, source, "p", window)
    in_parent = shape_of(source).events(config)(records) | window
    pool = ProcessPool(ChildSpec(child_handler, (config.model_dump_json(), source)), traits, 1)
    try:
        in_child = await pool.run(batch)
    finally:
        pool.close()
    assert in_child == in_parent  # echo_event also checked the child's Lambda context
