"""On Kinesis too, a dead-letter guard halt outlives restarts of the same bad deploy.

The guard's counts are kept in the lease item (`guard_note`) beside the checkpoint,
on kinesis-local + moto; before, each restart dead-lettered five more records.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from scripts.emulators import Emulator
from tests.kinesis.test_kinesis_source import config, lease_rows, make_stream
from worker.config import WorkerConfig
from worker.destinations.base import FailureEvent
from worker.runtime.worker import Worker


class Recording:
    """An on-failure destination that keeps what it was given (a test's own sink)."""

    name = "recording"

    def __init__(self) -> None:
        self.records: list[str] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, event: FailureEvent) -> None:
        self.records.extend(r.sequence_number for r in event.records)


async def test_a_guard_halt_on_a_shard_outlives_restarts_and_a_fixed_handler_goes_on(
    kinesis: Emulator, dynamodb: Emulator
):
    stream = await make_stream(kinesis, shards=1, records=40)
    table = f"leases-{uuid.uuid4().hex[:6]}"
    base = config(kinesis, dynamodb, stream, table, target="json:dumps")
    tree = base.model_dump(mode="json")
    tree["batching"] = {"batch_size": 10, "maximum_batching_window_ms": 100}
    tree["errors"] = {"maximum_retry_attempts": 0, "max_consecutive_dead_letters": 5,
                      "retry_backoff_ms": [5, 50]}  # fmt: skip
    cfg = WorkerConfig.model_validate(tree)
    dlq = Recording()

    async def failing(batch) -> None:
        raise ValueError("bad deploy")

    async def run(handler, until) -> None:
        worker = Worker(cfg, handler=handler, destination=dlq)
        task = asyncio.create_task(worker.serve())
        deadline = time.monotonic() + 60
        try:
            while not until(worker):
                assert time.monotonic() < deadline and not task.done(), "not in time"
                await asyncio.sleep(0.05)
        finally:
            worker.request_exit()
            await task

    def halted(worker: Worker) -> bool:
        return any(p.halted for p in worker.assignments.partitions())

    for _ in range(3):  # the first run, then two restarts of the same bad deploy
        await run(failing, halted)
        assert len(dlq.records) == 5
    (row,) = await lease_rows(dynamodb, table)
    assert row.note.startswith("dlg1:")

    handled: list[str] = []

    async def fixed(batch) -> None:
        handled.extend(r.sequence_number for r in batch.records)

    await run(fixed, lambda w: len(handled) >= 40)
    assert len(dlq.records) == 5
