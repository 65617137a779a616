"""A call past handler.timeout_s never overlaps the next call of its partition.

A thread cannot be stopped: the partition waits for it to return before the retry
(or the next batch) starts, and the thread pool has room for overrunning calls, so
a healthy partition keeps its latency while another partition's calls are wedged.
A handler process past its timeout is killed and replaced.
"""

import itertools
import os
import threading
import time
from pathlib import Path

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until


def produce(broker: MemoryBroker, partition: int, n: int) -> None:
    for i in range(n):
        broker.produce("t", b"%d" % i, partition=partition, key=b"k")


async def test_a_thread_call_past_its_timeout_never_overlaps_the_partitions_next_call(caplog):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    produce(broker, 0, 8)
    calls: list[list] = []  # [entered, exited or None, offsets], appended on entry
    written: list[int] = []
    lock = threading.Lock()

    def handler(batch):
        offsets = [r.offset for r in batch.records]
        with lock:
            call = [time.monotonic(), None, offsets]
            first = not calls
            calls.append(call)
        if first:
            time.sleep(0.6)  # three times the timeout: the first call overruns
        with lock:
            written.extend(offsets)
            call[1] = time.monotonic()

    settings = {"handler": {"concurrency": "thread", "timeout_s": 0.2, "threads": 4},
                "batching": {"batch_size": 8}}  # fmt: skip
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        await wait_until(lambda: all(c[1] is not None for c in calls))
        timeouts = w.metrics.batches.labels("memory", "t-0", "timeout").value
        overruns = w.metrics.registry.get_sample_value(
            "worker_handler_overruns_total", {"source": "memory", "partition": "t-0"}
        )
    assert overruns and overruns >= 1  # the worker wires the counter into its invoker
    calls.sort(key=lambda c: c[0])
    for before, after in itertools.pairwise(calls):
        assert after[0] >= before[1], f"two calls of one partition overlapped: {calls}"
    # The overrunning call wrote 0..7 first; every retry came after it, in order.
    assert written[:8] == list(range(8)) and sorted(set(written)) == list(range(8))
    assert timeouts == 1
    assert "event=handler_overrun " in caplog.text
    assert "event=handler_overrun_wait " in caplog.text


async def test_a_healthy_partition_keeps_its_latency_while_another_partitions_calls_are_wedged():
    """The issue's case: a pool of two threads; one partition's calls hang."""
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    produce(broker, 0, 4)
    produce(broker, 1, 40)
    release = threading.Event()
    healthy_durations: list[float] = []

    def handler(batch):
        started = time.monotonic()
        if batch.records[0].partition == 0:
            release.wait(30)  # wedged until the test lets it go
            return None
        time.sleep(0.02)
        healthy_durations.append(time.monotonic() - started)
        return None

    settings = {"handler": {"concurrency": "thread", "timeout_s": 0.3, "threads": 2},
                "batching": {"batch_size": 2}}  # fmt: skip
    try:
        async with running_worker(handler, broker, ["t"], settings) as w:
            started = time.monotonic()
            await wait_until(lambda: broker.committed("test", "t", 1) == 40, timeout_s=10)
            healthy_took = time.monotonic() - started
            wedged_timeouts = w.metrics.batches.labels("memory", "t-0", "timeout").value
            healthy_timeouts = w.metrics.batches.labels("memory", "t-1", "timeout").value
            assert broker.committed("test", "t", 0) is None  # still wedged
            release.set()
            await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=10)
    finally:
        release.set()
    print(f"healthy partition: 20 batches in {healthy_took:.2f}s, "
          f"max call {max(healthy_durations) * 1000:.0f} ms; wedged partition: "
          f"{wedged_timeouts:.0f} timeouts")  # fmt: skip
    assert healthy_timeouts == 0 and wedged_timeouts >= 1
    assert healthy_took < 3.0  # 20 calls of 20 ms; the old code timed out here


def calls_of(directory: Path) -> tuple[list[str], int, bool]:
    first_pid = int((directory / "first.pid").read_text())
    lines = (directory / "calls").read_text().splitlines()
    return lines, first_pid, os.path.exists(f"/proc/{first_pid}")


async def test_a_handler_process_past_its_timeout_is_killed_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("RESULT_DIR", str(tmp_path))
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    produce(broker, 0, 4)
    settings = {
        "handler": {"concurrency": "process", "processes": 1, "timeout_s": 1.0,
                    "target": "tests.unit.process_handlers:hang_first_call"},
        "batching": {"batch_size": 4},
        "errors": {"bisect_batch_on_function_error": False},
    }  # fmt: skip
    from tests.unit.process_handlers import hang_first_call

    started = time.monotonic()
    async with running_worker(hang_first_call, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=60)
        timeouts = w.metrics.batches.labels("memory", "t-0", "timeout").value
    took = time.monotonic() - started
    lines, first_pid, first_alive = calls_of(tmp_path)
    assert timeouts == 1
    assert lines[0] == f"enter {first_pid} first"
    assert lines[1:] == [f"enter {lines[1].split()[1]} first_alive=False offsets=0"]
    assert int(lines[1].split()[1]) != first_pid  # a new process
    assert not first_alive
    assert took < 30  # not the 120 s the first call would have slept
