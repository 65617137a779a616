"""Talking to the real broker from tests: topics, keyed records, offsets, worker processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from prometheus_client.parser import text_string_to_metric_families

from load.produce import create_topic

__all__ = ["create_topic"]  # shared with the demo and the benchmark

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


async def wait_for_group_coordinator(bootstrap: str, timeout_s: float = 60) -> None:
    """A new broker creates its offsets topic on first use; wait until groups can commit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                await admin.find_coordinator("warm-up")
                return
            except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def produce_keyed(
    bootstrap: str, topic: str, count: int, keys: int = 50, partitions: int | None = None
) -> None:
    """`count` records keyed k0..k{keys-1}; each value is {"key": ..., "seq": n per key}.

    With `partitions`, key kN goes to partition N % partitions (so a test knows which
    keys, and so which key lanes, each partition has); else the producer's partitioner
    decides.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    await producer.start()
    try:
        seq: dict[int, int] = defaultdict(int)
        futures = []
        for i in range(count):
            k = i % keys
            value = orjson.dumps({"key": f"k{k}", "seq": seq[k]})
            seq[k] += 1
            partition = None if partitions is None else k % partitions
            futures.append(
                await producer.send(topic, value, key=f"k{k}".encode(), partition=partition)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def keyed_topic(
    bootstrap: str, count: int, partitions: int, by_key_number: bool = False
) -> tuple[str, dict[int, int]]:
    """A new topic holding `count` keyed records (see `produce_keyed`); its end offsets."""
    topic = unique("telemetry")

    async def go() -> dict[int, int]:
        await create_topic(bootstrap, topic, partitions)
        spread = partitions if by_key_number else None
        await produce_keyed(bootstrap, topic, count, partitions=spread)
        return await end_offsets(bootstrap, topic, partitions)

    return topic, asyncio.run(go())


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets of `topic`, read from the broker now."""
    return asyncio.run(committed_offsets(bootstrap, group, topic))


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return {}  # the offsets topic is still being created: nothing is committed yet
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def read_handled(record_dir: Path, pid: int | None = None) -> dict[int, list[int]]:
    """partition -> offsets in the order a worker process handled them."""
    out: dict[int, list[int]] = defaultdict(list)
    files = [record_dir / f"handled.{pid}"] if pid else sorted(record_dir.glob("handled.*"))
    for path in files:
        if path.exists():
            for line in path.read_text().splitlines():
                p, o, _ = line.split(" ")
                out[int(p)].append(int(o))
    return out


def read_gate(gate: Path, name: str = "entered") -> list[tuple[int, int, int]]:
    """(partition, first, last) of each batch the recording handler held ("entered") or
    let go after a hold ("exited"), in order."""
    path = gate / name
    if not path.exists():
        return []
    rows = (line.split(" ") for line in path.read_text().splitlines())
    return [(int(p), int(first), int(last)) for _, p, first, last in rows]


class CommitBarrier:
    """A one-partition topic the worker also consumes, to know its commits caught up.

    `wait()` produces a record to it and waits until the group's committed offset
    covers that record. The worker commits every finished partition in each commit
    round, one round at a time, so once a record produced now is committed, every
    position the worker had finished before now has been sent to the broker too:
    what the broker shows then is what the worker meant to commit, not a commit
    still in flight.
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.topic = unique("barrier")

    async def create(self) -> None:
        await create_topic(self.bootstrap, self.topic, 1)

    async def wait(self, timeout_s: float = 30) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            meta = await producer.send_and_wait(self.topic, b"{}", partition=0)
        finally:
            await producer.stop()
        deadline = time.monotonic() + timeout_s
        while (await committed_offsets(self.bootstrap, self.group, self.topic)).get(0, 0) <= (
            meta.offset
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not commit {self.topic} in {timeout_s}s")
            await asyncio.sleep(0.05)


#: A test (or case) CI runs only with STREAMWORKER_LONG=1: its bounded version stays in CI.
LONG = [
    pytest.mark.long,
    pytest.mark.skipif(not os.environ.get("STREAMWORKER_LONG"), reason="long: STREAMWORKER_LONG=1"),
]


def long_run(test: Callable[..., Any]) -> Callable[..., Any]:
    """The `LONG` marks on a whole test."""
    for mark in LONG:
        test = mark(test)
    return test


#: The Kafka clients a test parametrized with the `kafka_client` fixture runs on.
KAFKA_CLIENTS = ("aiokafka", "librdkafka")
#: The client `write_config` writes (the `kafka_client` fixture sets it for its test).
client = {"name": "aiokafka"}


def on_clients(name: str, cases: list, librdkafka: list) -> pytest.MarkDecorator:
    """Every case of `name` on aiokafka, and only the cases `librdkafka` lists on it: a
    test parametrized by its own cases runs its core ones on both clients, in bounded CI
    time (the `kafka_client` fixture takes each pair's client)."""
    pairs = [("aiokafka", c) for c in cases] + [("librdkafka", c) for c in librdkafka]
    return pytest.mark.parametrize(("kafka_client", name), pairs, indirect=["kafka_client"])


def write_config(path: Path, bootstrap: str, topic: str, group: str, **sections: dict) -> Path:
    base = {
        "source": {
            "client": client["name"],
            "bootstrap_servers": [bootstrap],
            "topics": [topic],
            "group_id": group,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "batching": {"batch_size": 100, "maximum_batching_window_ms": 50},
        "handler": {"target": "recording_handler:handle", "timeout_s": 30},
        "metrics": {"listen": "127.0.0.1:0"},
        "errors": {"retry_backoff_ms": [10, 200]},
        "runtime": {"log_format": "text"},
    }
    for name, values in sections.items():
        section = base.setdefault(name, {})
        section.update(values)
        for key in [k for k, v in values.items() if v is None]:  # None: leave the key out
            del section[key]
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {orjson.dumps(value).decode()}")
    path.write_text("\n".join(lines) + "\n")
    return path


class WorkerProcess:
    """`python -m worker run` as a child process, with its log captured to a file."""

    def __init__(self, config: Path, record_dir: Path, extra_env: dict[str, str] | None = None):
        self.log_path = record_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = {
            **os.environ,
            "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}",
            "RECORD_DIR": str(record_dir),
            **(extra_env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            cwd=HERE,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 60, count: int = 1) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    @property
    def metrics_port(self) -> int:
        return int(self.wait_for_log(r"metrics_port=(\d+)").group(1))

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def keeps_running(self, seconds: float) -> None:
        """The worker is still running after `seconds`: what a watchdog must not end (a
        negative, so it can only be watched for a while, not awaited)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            time.sleep(0.1)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The worker's metrics now: (name, sorted label items) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def eventually(predicate: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    """Wait until the system under test makes `predicate` true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def handled_by(record_dir: Path, *workers: WorkerProcess) -> dict[int, set[int]]:
    """Every offset the recording handler saw in any of `workers`, by partition."""
    handled: dict[int, set[int]] = {}
    for worker in workers:
        for p, offsets in read_handled(record_dir, worker.pid).items():
            handled.setdefault(p, set()).update(offsets)
    return handled


def a_second_run_finishes(
    config: Path, record_dir: Path, bootstrap: str, group: str, topic: str,
    first: WorkerProcess, partitions: int,
) -> None:  # fmt: skip
    """A second worker of the group on `config` commits `topic` to its end, and the two
    runs together handled every record of it (nothing lost); it then stops with exit 0."""
    ends = asyncio.run(end_offsets(bootstrap, topic, partitions))
    second = WorkerProcess(config, record_dir)
    try:
        # Running first: the first run may have committed all already, and a SIGTERM
        # before the signal handlers are installed ends a worker with no line, exit -15.
        second.wait_for_log("event=assigned", timeout_s=60)
        eventually(lambda: asyncio.run(committed_offsets(bootstrap, group, topic)) == ends,
                   what="second run committed")  # fmt: skip
        assert handled_by(record_dir, first, second) == {
            p: set(range(end)) for p, end in ends.items()
        }
        second.terminate()
        code = second.wait()
        assert code == 0, second.log()[-3000:]
    finally:
        second.stop()


async def open_transactions(kafka: str, topic: str, partitions: int) -> AIOKafkaProducer:
    """5 plain records on each partition, then a transaction left open over 4 more."""
    await create_topic(kafka, topic, partitions)
    plain = AIOKafkaProducer(bootstrap_servers=kafka)
    await plain.start()
    try:
        for p in range(partitions):
            for i in range(5):
                await plain.send_and_wait(topic, b'{"seq": %d}' % i, partition=p)
    finally:
        await plain.stop()
    txn = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=unique("tx"))
    await txn.start()
    await txn.begin_transaction()
    for p in range(partitions):
        for i in range(4):
            await txn.send_and_wait(topic, b'{"open": %d}' % i, partition=p)
    return txn
