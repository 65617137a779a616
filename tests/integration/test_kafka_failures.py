"""Failure semantics on the real Kafka broker: bisect, DLQ topic, age, partial, outage, redrive."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAlreadyExistsError

from tests.integration import kafka_helpers
from tests.integration.kafka_helpers import (
    ROOT,
    committed_offsets,
    create_topic,
    end_offsets,
    on_clients,
    unique,
)
from worker.config import WorkerConfig
from worker.destinations.redrive import topic_partitions
from worker.runtime.worker import Worker

pytestmark = pytest.mark.kafka
PARTITIONS = 4
POISON = {1001, 2002, 3003, 4004, 5005}


def config(kafka: str, topic: str, group: str, **sections: dict[str, Any]) -> WorkerConfig:
    tree: dict[str, dict[str, Any]] = {
        "source": {
            "client": kafka_helpers.client["name"],
            "bootstrap_servers": [kafka],
            "topics": [topic],
            "group_id": group,
        },
        "batching": {"batch_size": 500, "maximum_batching_window_ms": 2000},
        "errors": {"retry_backoff_ms": [5, 50]},
        "metrics": {"enabled": False},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return WorkerConfig.model_validate(tree)


@asynccontextmanager
async def running(cfg: WorkerConfig, handler: Callable[..., Any]) -> AsyncIterator[Worker]:
    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        yield worker
    finally:
        worker.request_exit()
        await task


async def produce_numbered(
    kafka: str, topic: str, count: int, partitions: int, timestamp_ms: int | None = None
) -> None:
    """Values {"i": n}, record n in partition n % partitions (so offset = n // partitions)."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=10, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                orjson.dumps({"i": i}),
                key=b"k%d" % i,
                partition=i % partitions,
                timestamp_ms=timestamp_ms,
                headers=[("origin", b"sensor")],
            )
            for i in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(kafka: str, topic: str) -> list[Any]:
    tps = await topic_partitions([kafka], topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        out = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def wait_fully_committed(kafka: str, group: str, topic: str, partitions: int) -> None:
    ends = await end_offsets(kafka, topic, partitions)
    deadline = time.monotonic() + 120
    while await committed_offsets(kafka, group, topic) != ends:
        assert time.monotonic() < deadline, "not fully committed in time"
        await asyncio.sleep(0.1)


class PoisonHandler:
    """Fails (by raising or by hanging past the timeout) any batch holding a poison record."""

    def __init__(self, mode: str = "raise", poison: set[int] = POISON) -> None:
        self.mode = mode
        self.poison = poison
        self.invocations = 0
        self.failing = 0
        self.handled: Counter[int] = Counter()

    async def __call__(self, batch) -> None:
        self.invocations += 1
        values = [r.json()["i"] for r in batch.records]
        if self.poison.intersection(values):
            self.failing += 1
            if self.mode == "timeout":
                await asyncio.sleep(30)
            raise ValueError(f"poison reading in {values[0]}..{values[-1]}")
        self.handled.update(values)


@on_clients("mode", ["raise", "timeout"], librdkafka=["raise"])
async def test_bisect_sends_exactly_the_poison_records_to_the_dlq_topic(
    kafka: str, kafka_client: str, mode: str
):
    topic, dlq, group = unique("tel"), unique("dlq"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await create_topic(kafka, dlq, 1)
    await produce_numbered(kafka, topic, 10_000, PARTITIONS)
    handler = PoisonHandler(mode)
    cfg = config(
        kafka, topic, group,
        handler={"timeout_s": 0.3},
        errors={
            "bisect_batch_on_function_error": True,
            "maximum_retry_attempts": 2,
            "on_failure": f"kafka://{dlq}",
        },
    )  # fmt: skip
    async with running(cfg, handler) as worker:
        await wait_fully_committed(kafka, group, topic, PARTITIONS)
        m = worker.metrics
        dead = sum(
            m.records_dead_lettered.labels("kafka", f"{topic}-{p}").value for p in range(PARTITIONS)
        )
        bisections = sum(
            m.bisections.labels("kafka", f"{topic}-{p}").value for p in range(PARTITIONS)
        )

    assert set(handler.handled) == set(range(10_000)) - POISON
    assert all(n == 1 for n in handler.handled.values())  # each healthy record handled once
    healthy_batches = 10_000 // 500
    depth = math.ceil(math.log2(500))
    # Per poison: one failing invocation per level of the split down to one record, plus
    # the retries; each split's healthy half is one more (successful) invocation.
    assert handler.failing <= len(POISON) * (depth + 1 + 2)
    assert handler.invocations <= healthy_batches + len(POISON) * (2 * depth + 1 + 2)
    print(f"{mode}: {handler.invocations} invocations, {handler.failing} failing")
    assert dead == len(POISON) and bisections <= len(POISON) * depth

    dead_lettered = await read_all(kafka, dlq)
    assert sorted(orjson.loads(r.value)["i"] for r in dead_lettered) == sorted(POISON)
    for r in dead_lettered:
        i = orjson.loads(r.value)["i"]
        headers = dict(r.headers)
        assert r.key == b"k%d" % i
        assert headers["origin"] == b"sensor"  # the original header is kept
        assert headers["worker.source.topic"] == topic.encode()
        assert headers["worker.source.partition"] == str(i % PARTITIONS).encode()
        assert headers["worker.source.offset"] == str(i // PARTITIONS).encode()
        assert headers["worker.condition"] == b"RetryAttemptsExhausted"
        assert headers["worker.attempts"] == b"3"
        expected_type = b"Timeout" if mode == "timeout" else b"ValueError"
        assert headers["worker.error.type"] == expected_type


async def test_bisect_off_sends_whole_failing_batches_and_counts_them(kafka: str):
    topic, dlq, group = unique("tel"), unique("dlq"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await create_topic(kafka, dlq, 1)
    await produce_numbered(kafka, topic, 10_000, PARTITIONS)
    handler = PoisonHandler()
    cfg = config(
        kafka, topic, group,
        errors={
            "bisect_batch_on_function_error": False,
            "maximum_retry_attempts": 2,
            "on_failure": f"kafka://{dlq}",
        },
    )  # fmt: skip
    async with running(cfg, handler) as worker:
        await wait_fully_committed(kafka, group, topic, PARTITIONS)
        dead = {
            p: worker.metrics.records_dead_lettered.labels("kafka", f"{topic}-{p}").value
            for p in range(PARTITIONS)
        }

    dead_lettered = await read_all(kafka, dlq)
    by_partition: dict[int, list[int]] = {}
    for r in dead_lettered:
        h = dict(r.headers)
        by_partition.setdefault(int(h["worker.source.partition"]), []).append(
            int(h["worker.source.offset"])
        )
    poison_offsets = {(i % PARTITIONS, i // PARTITIONS) for i in POISON}
    runs = []
    for p, offsets in by_partition.items():
        offsets.sort()
        for start in range(0, len(offsets), 500):
            run = offsets[start : start + 500]
            assert run == list(range(run[0], run[0] + 500)) and run[0] % 500 == 0
            assert any((p, o) in poison_offsets for o in run)
            runs.append((p, run[0]))
    assert len(runs) == len(POISON)  # the five batches that held a poison record, whole
    assert sum(dead.values()) == len(dead_lettered) == 5 * 500
    assert handler.failing == len(POISON) * 3  # each failing batch: first try + 2 retries
    assert len(handler.handled) == 10_000 - 5 * 500


async def test_records_older_than_the_age_limit_go_to_the_dlq_without_an_invoke(kafka: str):
    topic, dlq, group = unique("tel"), unique("dlq"), unique("g")
    await create_topic(kafka, topic, 1)
    await create_topic(kafka, dlq, 1)
    two_hours_ago = int((time.time() - 7200) * 1000)
    await produce_numbered(kafka, topic, 50, 1, timestamp_ms=two_hours_ago)
    invoked: list[int] = []

    async def handler(batch) -> None:
        invoked.extend(r.json()["i"] for r in batch.records)

    cfg = config(
        kafka, topic, group,
        errors={"maximum_record_age_s": 60, "on_failure": f"kafka://{dlq}"},
    )  # fmt: skip
    async with running(cfg, handler):
        await wait_fully_committed(kafka, group, topic, 1)
        await produce_numbered(kafka, topic, 10, 1)  # fresh ones are invoked as usual
        await wait_fully_committed(kafka, group, topic, 1)
    assert invoked == list(range(10))
    dead = await read_all(kafka, dlq)
    assert [orjson.loads(r.value)["i"] for r in dead] == list(range(50))
    assert {dict(r.headers)["worker.condition"] for r in dead} == {b"RecordAgeExceeded"}


@pytest.mark.parametrize(
    ("mode", "second_call"),
    [("from_first_failure", list(range(3, 10))), ("failed_only", [3, 6])],
)
async def test_partial_batch_response_reinvokes_exactly_the_right_records(
    kafka: str, mode: str, second_call: list[int]
):
    topic, group = unique("tel"), unique("g")
    await create_topic(kafka, topic, 1)
    await produce_numbered(kafka, topic, 20, 1)
    calls: list[list[int]] = []

    async def handler(batch):
        calls.append([r.offset for r in batch.records])
        if len(calls) == 1:
            return [r for r in batch.records if r.offset in (3, 6)]
        return None

    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 10},
        errors={"partial_retry": mode, "report_batch_item_failures": True},
    )  # fmt: skip
    async with running(cfg, handler):
        await wait_fully_committed(kafka, group, topic, 1)
    assert calls == [list(range(10)), second_call, list(range(10, 20))]


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def create_again(bootstrap: str, name: str, timeout_s: float = 30) -> None:
    """Create a topic just deleted: the broker refuses while the deletion is still going."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await create_topic(bootstrap, name, 1)
        except TopicAlreadyExistsError:
            assert time.monotonic() < deadline, f"{name} is still being deleted"
            await asyncio.sleep(0.2)


async def test_an_unwritable_dlq_holds_the_partition_and_recovers_once_writable(
    kafka: str, caplog: pytest.LogCaptureFixture
):
    topic, dlq, group = unique("tel"), unique("dlq-later"), unique("g")
    await create_topic(kafka, topic, 1)
    await create_topic(kafka, dlq, 1)  # the start checks it exists; it goes away below
    handler = PoisonHandler(poison={12})
    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 10},
        errors={
            "bisect_batch_on_function_error": False,
            "maximum_retry_attempts": 0,
            "on_failure": f"kafka://{dlq}",  # the broker does not auto-create topics
            "on_failure_timeout_s": 1,
        },
    )  # fmt: skip
    async with running(cfg, handler) as worker:
        await delete_topic(kafka, dlq)
        await produce_numbered(kafka, topic, 30, 1)
        failures = worker.metrics.destination_failures.labels("kafka", f"kafka://{dlq}")
        deadline = time.monotonic() + 60
        while failures._value.get() < 2:  # it keeps trying, and logs each failure
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await committed_offsets(kafka, group, topic) == {0: 10}
        assert set(handler.handled) == set(range(10))  # 20..29 wait behind the failure
        assert "event=destination_failed" in caplog.text
        # each failure says why, even when the client's exception has no message
        reasons = re.findall(rf"error=.kafka://{dlq}: ([^'\"]*)", caplog.text)
        assert reasons and all(" " in r and not r.endswith(": ") for r in reasons), reasons
        await create_again(kafka, dlq)
        await wait_fully_committed(kafka, group, topic, 1)
    dead = await read_all(kafka, dlq)
    assert sorted(orjson.loads(r.value)["i"] for r in dead) == list(range(10, 20))
    assert set(handler.handled) == set(range(30)) - set(range(10, 20))


async def test_redrive_moves_dlq_records_back_and_a_fixed_handler_processes_them(kafka: str):
    topic, dlq, group = unique("tel"), unique("dlq"), unique("g")
    await create_topic(kafka, topic, PARTITIONS)
    await create_topic(kafka, dlq, 1)
    await produce_numbered(kafka, topic, 6000, PARTITIONS)
    errors = {"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}"}
    async with running(config(kafka, topic, group, errors=errors), PoisonHandler()):
        await wait_fully_committed(kafka, group, topic, PARTITIONS)
    assert len(await read_all(kafka, dlq)) == len(POISON)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", "redrive", "--from", f"kafka://{dlq}",
         "--to", f"kafka://{topic}", "--bootstrap", kafka],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"moved {len(POISON)} records from kafka://{dlq} to kafka://{topic}" in result.stdout

    fixed: list[tuple[int, dict[str, bytes]]] = []

    async def fixed_handler(batch) -> None:
        fixed.extend((r.json()["i"], dict(r.headers)) for r in batch.records)

    async with running(config(kafka, topic, group), fixed_handler):
        await wait_fully_committed(kafka, group, topic, PARTITIONS)
    assert sorted(i for i, _ in fixed) == sorted(POISON)
    for _, headers in fixed:
        assert headers == {"origin": b"sensor"}  # error headers stripped, original kept


async def test_a_record_over_the_dlq_topic_limit_goes_as_a_counted_envelope(kafka: str):
    """The first version kept aiokafka's 1 MB request limit: a failing 5 MB record got
    MessageSizeTooLargeError on every attempt and held its partition for ever. A failure
    message with a lone surrogate could not be put in a header either."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic, dlq, group = unique("big"), unique("dlq"), unique("g")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:  # the source holds 8 MB records; the DLQ keeps the broker's default (1 MB)
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={
            "max.message.bytes": str(8 * 1024 * 1024)})])  # fmt: skip
    finally:
        await admin.close()
    await create_topic(kafka, dlq, 1)
    big = b'{"i": 1, "blob": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    producer = AIOKafkaProducer(bootstrap_servers=kafka, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for i, value in enumerate([b'{"i": 0}', big, b'{"i": 2}', b'{"i": 3}']):
            await producer.send_and_wait(topic, value, key=b"k%d" % i, partition=0)
    finally:
        await producer.stop()

    async def handler(batch) -> None:
        for r in batch.records:
            if r.offset == 1:
                raise ValueError("too big to handle")
            if r.offset == 2:
                raise ValueError("bad byte \ud800 in reading")

    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 10},
        errors={"maximum_retry_attempts": 0, "on_failure": f"kafka://{dlq}"},
    )  # fmt: skip
    async with running(cfg, handler) as worker:
        await wait_fully_committed(kafka, group, topic, 1)
        truncated = worker.metrics.dead_letter_truncated.labels(f"kafka://{dlq}")._value.get()
    assert truncated == 1
    dead = {int(dict(r.headers)["worker.source.offset"]): r for r in await read_all(kafka, dlq)}
    assert sorted(dead) == [1, 2]
    envelope = dead[1]
    headers = dict(envelope.headers)
    assert headers["worker.truncated"] == b"true"
    assert headers["worker.original_bytes"] == str(len(big)).encode()
    document = orjson.loads(envelope.value)
    assert document["position"] == 1 and document["original_bytes"] == len(big)
    assert document["error"]["message"] == "too big to handle" and envelope.key == b"k1"
    assert dict(dead[2].headers)["worker.error.message"] == b"bad byte \\ud800 in reading"
    assert dead[2].value == b'{"i": 2}'


async def test_a_dead_letter_guard_halt_outlives_restarts_of_the_same_bad_deploy(
    kafka: str, kafka_client: str
):
    """The guard's counts lived in memory, so each restart of a halted worker (its
    orchestrator restarts it, /healthz failing) dead-lettered five more records. They
    now travel in the Kafka commit's metadata and are read back on assignment."""
    topic, dlq, group = unique("halt"), unique("halt-dlq"), unique("g")
    await create_topic(kafka, topic, 1)
    await create_topic(kafka, dlq, 1)
    await produce_numbered(kafka, topic, 40, 1)
    cfg = config(
        kafka, topic, group,
        batching={"batch_size": 10, "maximum_batching_window_ms": 100},
        errors={"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 5,
                "on_failure": f"kafka://{dlq}"},
    )  # fmt: skip

    async def until_halted() -> None:
        bad = PoisonHandler(poison=set(range(40)))
        async with running(cfg, bad) as worker:
            deadline = time.monotonic() + 60
            while not any(p.halted for p in worker.assignments.partitions()):
                assert time.monotonic() < deadline, "never halted"
                await asyncio.sleep(0.05)
        assert bad.failing

    for _ in range(3):  # the first run, then two restarts of the same bad deploy
        await until_halted()
        assert sorted(orjson.loads(r.value)["i"] for r in await read_all(kafka, dlq)) == [
            0, 1, 2, 3, 4,
        ]  # fmt: skip
    fixed = PoisonHandler(poison=set())
    async with running(cfg, fixed):
        await wait_fully_committed(kafka, group, topic, 1)
    # 0-4 were dead-lettered inside a batch that was never committed: redone, at least once.
    assert sorted(fixed.handled) == list(range(40))
    assert len(await read_all(kafka, dlq)) == 5
