"""A new group (no committed offset) starts where `starting_position` says, on both
clients, on the real broker: the no-checkpoint error aiokafka's fetcher raises while the
source still seeks (swallowed since 77c368c) must neither skip records (a partition read
from the wrong place) nor stall one (never fetched), and a member joining a group that
has committed nothing yet must not skip what the first member had not handled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    read_gate,
    read_handled,
    scrape,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3
OLD, NEW = 20, 20  # records per partition before and after the start timestamp


async def two_eras(bootstrap: str, topic: str, old_ms: int, new_ms: int) -> None:
    """`OLD` records per partition stamped `old_ms`, then `NEW` stamped `new_ms`."""
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        for count, ts in ((OLD, old_ms), (NEW, new_ms)):
            sent = [await producer.send(topic, b"r", partition=p, timestamp_ms=ts)
                    for _ in range(count) for p in range(PARTITIONS)]  # fmt: skip
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def produce_to(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    try:
        for p in range(PARTITIONS):
            await asyncio.gather(*[await producer.send(topic, b"r", partition=p)
                                   for _ in range(count)])  # fmt: skip
    finally:
        await producer.stop()


def no_poll_error(worker: WorkerProcess) -> None:
    metrics = scrape(worker.metrics_port)
    errors = sum(v for (name, _), v in metrics.items() if name == "worker_poll_errors_total")
    assert errors == 0, worker.log()[-3000:]
    assert "poll_failed" not in worker.log()


@pytest.mark.parametrize("start", ["at_timestamp", "trim_horizon"])
def test_a_new_group_starts_where_starting_position_says_on_every_partition(
    kafka: str, kafka_client: str, tmp_path: Path, start: str
):
    """Three fresh partitions prepared together: each read from exactly its start (the
    first record stamped at or after the timestamp, or the log start), none stalled,
    committed to the end, and no failed poll."""
    topic, group = unique("fresh"), unique("g")
    now_ms = int(time.time() * 1000)
    asyncio.run(two_eras(kafka, topic, now_ms - 3_600_000, now_ms))
    source = {
        "starting_position": start,
        "starting_position_timestamp": (now_ms - 1_800_000) / 1000,
    }
    config = write_config(tmp_path / "w.toml", kafka, topic, group, source=source)
    worker = WorkerProcess(config, tmp_path)
    try:
        done = dict.fromkeys(range(PARTITIONS), OLD + NEW)
        eventually(lambda: committed(kafka, group, topic) == done, timeout_s=15,
                   what=f"committed to the end: {committed(kafka, group, topic)}")  # fmt: skip
        first = OLD if start == "at_timestamp" else 0
        handled = read_handled(tmp_path)
        for p in range(PARTITIONS):
            assert sorted(handled.get(p, [])) == list(range(first, OLD + NEW)), p
        no_poll_error(worker)
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def test_latest_a_member_joining_before_any_commit_skips_nothing_produced_after_the_start(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """`latest`, a new group: the first member starts at the ends; records are written to
    every partition; a second member joins (the partitions it takes have a checkpoint
    only if the first committed one). Every record written after the first member's
    start is handled by one of them and committed: a partition that moves with nothing
    committed would be sought to its end again by its new owner, records between skipped."""
    topic, group = unique("fresh-latest"), unique("g")
    asyncio.run(create_topic(kafka, topic, PARTITIONS))
    asyncio.run(produce_to(kafka, topic, 5))  # before the start: not to be read
    config = write_config(tmp_path / "w.toml", kafka, topic, group,
                          source={"starting_position": "latest"})  # fmt: skip
    first = WorkerProcess(config, tmp_path)
    second = None
    try:
        first.wait_for_log(r"event=assigned", timeout_s=15)
        asyncio.run(produce_to(kafka, topic, 10))
        second = WorkerProcess(config, tmp_path)
        asyncio.run(produce_to(kafka, topic, 10))
        second.wait_for_log(r"event=assigned", timeout_s=15)
        asyncio.run(produce_to(kafka, topic, 10))
        done = dict.fromkeys(range(PARTITIONS), 35)
        eventually(lambda: committed(kafka, group, topic) == done, timeout_s=20,
                   what=f"committed to the end: {committed(kafka, group, topic)}")  # fmt: skip
        handled = read_handled(tmp_path)
        for p in range(PARTITIONS):
            assert set(handled.get(p, [])) >= set(range(5, 35)), (p, sorted(handled.get(p, [])))
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_latest_a_worker_killed_with_its_first_batches_inside_the_handler_loses_none(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """`latest`, a new group: the worker starts at the ends, reads what is written next
    and is killed (kill -9) while a batch of every partition is provably inside the
    handler, so before any commit of a handled record. The next worker of the group must
    start where the first one did: if the first start was never committed it finds no
    checkpoint, starts at the ends again, and every record written after the first start
    is skipped for good (10 of 10 a partition on both clients, before `start_commit`)."""
    killed_inside_its_first_batches_loses_none(kafka, tmp_path, {})


def killed_inside_its_first_batches_loses_none(kafka: str, tmp_path: Path, source: dict) -> None:
    """The test above, on the group protocol and client `source` says."""
    topic, group = unique("fresh-crash"), unique("g")
    asyncio.run(create_topic(kafka, topic, PARTITIONS))
    asyncio.run(produce_to(kafka, topic, 5))  # before the start: not to be read
    config = write_config(tmp_path / "w.toml", kafka, topic, group,
                          source={"starting_position": "latest", **source})  # fmt: skip
    gate = tmp_path / "gate"
    gate.mkdir()
    hold = {"RECORD_HOLD": ",".join(f"{p}:0" for p in range(PARTITIONS)), "RECORD_GATE": str(gate)}
    first = WorkerProcess(config, tmp_path, hold)
    second = None
    try:
        first.wait_for_log(r"event=assigned", timeout_s=15)
        asyncio.run(produce_to(kafka, topic, 10))  # written after the group's start
        eventually(lambda: {p for p, _, _ in read_gate(gate)} == set(range(PARTITIONS)),
                   what="a batch of every partition held inside the handler")  # fmt: skip
        assert all(start >= 5 for _, start, _ in read_gate(gate))  # read from the start
        first.kill9()
        first.wait()
        second = WorkerProcess(config, tmp_path)
        done = dict.fromkeys(range(PARTITIONS), 15)
        eventually(lambda: committed(kafka, group, topic) == done, timeout_s=20,
                   what=f"committed to the end: {committed(kafka, group, topic)}")  # fmt: skip
        handled = read_handled(tmp_path, second.pid)
        for p in range(PARTITIONS):
            assert sorted(handled.get(p, [])) == list(range(5, 15)), p
    finally:
        first.stop()
        if second is not None:
            second.stop()
