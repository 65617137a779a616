"""Helpers for testing handlers and the pipeline without a broker.

from worker.testing import MemoryBroker, make_batch, running_worker

async def test_my_handler():
    await my_handler(make_batch([b'{"device_id": "d1", ...}']))

async def test_through_the_worker():
    broker = MemoryBroker()
    broker.create_topic("telemetry", partitions=2)
    broker.produce("telemetry", b"...", key=b"d1")
    async with running_worker(my_handler, broker, ["telemetry"]) as worker:
        await wait_until(lambda: fully_committed(broker, "test", ["telemetry"]))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from worker.config import WorkerConfig
from worker.destinations import Destination
from worker.observe.metrics import Metrics
from worker.outputs.memory import MemoryOutputs
from worker.outputs.outbox import Outbox
from worker.records import Batch
from worker.runtime.worker import Worker
from worker.sources.memory import MemoryBroker, MemoryRecord, MemorySource

__all__ = [
    "MemoryBroker",
    "MemoryOutputs",
    "MemoryRecord",
    "MemorySource",
    "fully_committed",
    "make_batch",
    "memory_config",
    "running_worker",
    "wait_until",
]


def make_batch(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    topic: str = "test",
    partition: int = 0,
    first_offset: int = 0,
    sends_to: Sequence[str] = (),
) -> Batch:
    """A batch as the worker would hand it to a native handler; with `sends_to` (output
    topics), what the handler `send`s is in `batch.outbox.items`."""
    now = int(time.time() * 1000)
    keys = keys or [None] * len(values)
    records = [
        MemoryRecord(topic, partition, first_offset + i, k, v, now)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    outbox = Outbox(frozenset(sends_to)) if sends_to else None
    return Batch(records, "memory", f"{topic}-{partition}", outbox=outbox)


def memory_config(settings: Mapping[str, Mapping[str, Any]] | None = None) -> WorkerConfig:
    """A config for in-process runs: memory source, no HTTP server, short timeouts."""
    tree: dict[str, dict[str, Any]] = {
        "source": {"kind": "memory"},
        "metrics": {"enabled": False},
        "batching": {"maximum_batching_window_ms": 0},
        "errors": {"retry_backoff_ms": [1, 10]},
    }
    for section, values in (settings or {}).items():
        tree.setdefault(section, {}).update(values)
    return WorkerConfig.model_validate(tree)


@asynccontextmanager
async def running_worker(
    handler: Callable[..., Any],
    broker: MemoryBroker,
    topics: Iterable[str],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    group_id: str = "test",
    metrics: Metrics | None = None,
    destination: Destination | None = None,
    clock: Callable[[], float] = time.monotonic,
    outputs: MemoryOutputs | None = None,
    source: MemorySource | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker on the memory broker for the duration of the block, then drain it.

    `clock` is the partitions' batching clock: a frozen one makes batching windows never
    end by time, so a test sees exactly what else cuts a batch. `source`: a memory source
    of the test's own (a subclass that says more), instead of a plain one."""
    source = source or MemorySource(broker, topics, group_id=group_id)
    config = memory_config(settings)
    if outputs is None and config.outputs.topics:
        outputs = MemoryOutputs(broker)  # batch.send into the broker's topics
    worker = Worker(
        config,
        source=source,
        handler=handler,
        metrics=metrics,
        destination=destination,
        clock=clock,
        outputs=outputs,
    )
    task = asyncio.create_task(worker.serve(), name="worker")
    try:
        yield worker
    finally:
        worker.request_exit()
        await task


def fully_committed(broker: MemoryBroker, group: str, topics: Iterable[str]) -> bool:
    return all(
        broker.committed(group, t, p) == broker.end_offset(t, p)
        for t in topics
        for p in range(len(broker.topics[t]))
    )


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Await a condition the code under test makes true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.005)
