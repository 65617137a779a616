"""A revoked partition is released only when nothing of it runs any more (issue 21).

On the memory source. Past `rebalance_timeout_s` a coroutine handler is cancelled
and a handler process is killed, so release goes on at the deadline (the process
only once it is gone); a thread cannot be stopped, so the revoke holds the
partition (`revoke_blocked`, counted) until the thread returns, and past the
source's hold limit the worker fails stop (exit 3) and never returns from the
revoke. The fault is the handler itself: it blocks on an event the test owns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from worker.runtime.worker import Worker
from worker.testing import MemoryBroker, MemorySource, memory_config, wait_until

TP = ("t", 0)
#: The documented exit status of a worker that failed stop (README, exit codes).
EXIT_REVOKE_STUCK = 3


def broker_with(n: int) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(n):
        broker.produce("t", b"%d" % i, key=b"k", partition=0)
    return broker


@asynccontextmanager
async def worker_on(broker: MemoryBroker, handler, settings: dict, hold_s: float | None):
    """A worker on the memory source, whose source declares a revoke hold of `hold_s`."""
    source = MemorySource(broker, ["t"], group_id="test")
    if hold_s is not None:
        source.revoke_hold_s = hold_s  # the trait a Kafka source declares
    w = Worker(memory_config(settings), source=source, handler=handler)
    task = asyncio.create_task(w.serve())
    try:
        yield w
    finally:
        w.request_exit()
        await asyncio.wait_for(task, 30)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def blocked_count(w: Worker) -> float:
    value = w.metrics.registry.get_sample_value(
        "worker_revoke_blocked_total", {"source": "memory", "partition": "t-0"}
    )
    return value or 0.0


class ThreadHandler:
    """A plain handler: the first call blocks until `release` is set; records its span."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ended_at: float | None = None

    def __call__(self, batch) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
            self.ended_at = time.monotonic()


THREADS = {"handler": {"concurrency": "thread", "timeout_s": 60},
           "batching": {"batch_size": 10}, "runtime": {"rebalance_timeout_s": 0.2}}  # fmt: skip


async def test_a_thread_past_the_revoke_deadline_holds_the_partition_until_it_returns(caplog):
    handler = ThreadHandler()
    async with worker_on(broker_with(20), handler, THREADS, hold_s=10) as w:
        await asyncio.to_thread(handler.entered.wait, 5)
        revoke = asyncio.create_task(w.source.revoke([TP]))
        await wait_until(lambda: "event=revoke_blocked partition=t-0 " in caplog.text)
        assert not revoke.done(), "released while its handler thread still ran"
        assert blocked_count(w) == 1
        handler.release.set()
        await asyncio.wait_for(revoke, 5)
        released_at = time.monotonic()
        assert handler.ended_at is not None and handler.ended_at <= released_at
        assert w.exit_code == 0 and not w.should_exit.is_set()
        assert w.source.broker.committed("test", "t", 0) is None  # the batch was abandoned
    assert "event=revoke_hold_exceeded" not in caplog.text


async def test_a_thread_past_the_hold_limit_fails_stop_with_exit_3_and_never_releases(caplog):
    handler = ThreadHandler()
    try:
        async with worker_on(broker_with(20), handler, THREADS, hold_s=0.6) as w:
            await asyncio.to_thread(handler.entered.wait, 5)
            revoke = asyncio.create_task(w.source.revoke([TP]))
            await asyncio.wait_for(w.should_exit.wait(), 5)
            assert w.exit_code == EXIT_REVOKE_STUCK
            assert "event=revoke_hold_exceeded partitions=t-0 " in caplog.text
            await asyncio.sleep(0.1)
            assert not revoke.done(), "the revoke returned: the group would move on"
            assert w.source.broker.committed("test", "t", 0) is None
            revoke.cancel()
    finally:
        handler.release.set()


async def test_a_source_without_a_hold_limit_fails_stop_at_the_deadline(caplog):
    handler = ThreadHandler()
    try:
        async with worker_on(broker_with(20), handler, THREADS, hold_s=None) as w:
            await asyncio.to_thread(handler.entered.wait, 5)
            revoke = asyncio.create_task(w.source.revoke([TP]))
            await asyncio.wait_for(w.should_exit.wait(), 5)
            assert w.exit_code == EXIT_REVOKE_STUCK and not revoke.done()
            revoke.cancel()
    finally:
        handler.release.set()


async def test_an_async_handler_past_the_deadline_is_cancelled_and_released_at_once(caplog):
    state = {"entered": asyncio.Event(), "cancelled": False, "ran_after": False}

    async def handler(batch) -> None:
        if state["entered"].is_set():
            return
        state["entered"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        state["ran_after"] = True

    settings = {**THREADS, "handler": {"timeout_s": 60}}
    async with worker_on(broker_with(20), handler, settings, hold_s=10) as w:
        await state["entered"].wait()
        started = time.monotonic()
        await asyncio.wait_for(w.source.revoke([TP]), 5)
        assert time.monotonic() - started < 2
        assert state["cancelled"] and not state["ran_after"]
        assert blocked_count(w) == 0 and w.exit_code == 0
    assert "event=revoke_blocked" not in caplog.text


async def test_an_async_handler_that_swallows_its_cancellation_holds_then_fails_stop(caplog):
    """Hostile: a coroutine that ignores CancelledError keeps its lane alive."""
    release = asyncio.Event()

    async def handler(batch) -> None:
        while not release.is_set():
            with suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    settings = {**THREADS, "handler": {"timeout_s": 60}}
    async with worker_on(broker_with(20), handler, settings, hold_s=1.0) as w:
        await asyncio.sleep(0.1)
        revoke = asyncio.create_task(w.source.revoke([TP]))
        await asyncio.wait_for(w.should_exit.wait(), 5)
        assert w.exit_code == EXIT_REVOKE_STUCK and not revoke.done()
        assert "event=revoke_blocked partition=t-0 " in caplog.text
        release.set()
        revoke.cancel()


@pytest.mark.timeout(60)
async def test_a_handler_process_past_the_deadline_is_killed_before_the_release(
    tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.setenv("RESULT_DIR", str(tmp_path))
    settings = {
        "handler": {"concurrency": "process", "processes": 1, "timeout_s": 60,
                    "target": "tests.unit.process_handlers:hang_first_call"},
        "batching": {"batch_size": 10}, "runtime": {"rebalance_timeout_s": 0.2},
    }  # fmt: skip
    from tests.unit.process_handlers import hang_first_call

    first = tmp_path / "first.pid"
    async with worker_on(broker_with(20), hang_first_call, settings, hold_s=30) as w:
        await wait_until(first.exists, timeout_s=30)
        pid = int(first.read_text())
        started = time.monotonic()
        await asyncio.wait_for(w.source.revoke([TP]), 15)
        took = time.monotonic() - started
        assert not alive(pid), "released while its child still ran"
        assert w.exit_code == 0 and blocked_count(w) == 0
    assert took < 10
    assert "event=handler_process_killed partition=t-0 reason=cancelled" in caplog.text
