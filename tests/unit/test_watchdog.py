"""The commit watchdog, on a stand-in view and a hand-driven clock, then on a real worker."""

import asyncio
from dataclasses import replace

from worker.observe.view import PartitionStats
from worker.observe.watchdog import EXIT_STALLED, CommitWatchdog, stacks
from worker.testing import MemoryBroker, running_worker, wait_until


def stats(**kw) -> PartitionStats:
    base = PartitionStats(
        key="p0", label="t-0", assigned_at=0.0, committed=10, shown_committed=11, unfinished=0,
        buffered=0, paused=False, releasing=False, halted=None, committed_records=0,
        dead_lettered=0, iterator_age_s=0.0, inflight=0,
    )  # fmt: skip
    return replace(base, **kw)


class FakeView:
    """One partition; `backlog` is what the source knows waits past the checkpoint."""

    def __init__(self) -> None:
        self.partitions = [stats()]
        self.backlog = True
        self.exit_code = 0

    def partition_stats(self):
        return self.partitions

    def waiting(self, key) -> bool:
        return self.backlog

    def request_exit(self, code: int) -> None:
        self.exit_code = code


def watchdog(view: FakeView, now: list[float]) -> CommitWatchdog:
    return CommitWatchdog(view, 10, view.request_exit, clock=lambda: now[0])


def test_commits_that_stop_while_records_wait_trip_it_after_the_timeout():
    view, now = FakeView(), [0.0]
    dog = watchdog(view, now)
    for t in (0.0, 5.0, 9.9):
        now[0] = t
        dog.check()
    assert dog.stalled is None
    now[0] = 10.0
    dog.check()
    assert dog.stalled and "t-0" in dog.stalled and view.exit_code == EXIT_STALLED


def test_advancing_commits_or_nothing_waiting_keep_it_quiet():
    view, now = FakeView(), [0.0]
    dog = watchdog(view, now)
    for t in range(0, 60, 5):
        now[0] = float(t)
        view.partitions = [stats(committed=100 + t)]  # progress
        dog.check()
    view.backlog = False  # nothing waiting: an idle partition is not stalled
    for t in range(60, 120, 5):
        now[0] = float(t)
        dog.check()
    assert dog.stalled is None


def test_unfinished_records_count_as_waiting_where_the_source_counts_no_lag():
    """Kinesis reports no record lag: a batch stuck in the handler must still trip it."""
    view, now = FakeView(), [0.0]
    view.backlog = False
    view.partitions = [stats(unfinished=20)]
    dog = watchdog(view, now)
    dog.check()
    now[0] = 10.0
    dog.check()
    assert dog.stalled and view.exit_code == EXIT_STALLED


def test_a_new_assignment_restarts_the_clock_and_a_drain_is_not_timed():
    view, now = FakeView(), [0.0]
    dog = watchdog(view, now)
    dog.check()
    now[0] = 8.0
    view.partitions = [stats(releasing=True)]  # revoked: its own deadline bounds the drain
    dog.check()
    now[0] = 12.0
    view.partitions = [stats(assigned_at=12.0)]  # given back: a new life, a new clock
    dog.check()
    now[0] = 21.0
    dog.check()
    assert dog.stalled is None
    now[0] = 22.0
    dog.check()
    assert dog.stalled is not None


async def test_revoking_one_partition_does_not_blind_it_to_a_stall_of_another():
    """The first version set a worker-wide `rebalancing` flag on any revoke and cleared it
    only on the next assignment, which the memory source (and a Kinesis lease loss) never
    sends: the watchdog then stayed silent for good."""
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    broker.produce("t", b"x", partition=0)
    wedged = asyncio.Event()

    async def handler(batch):
        if batch.partition == "t-0":
            wedged.set()
            await asyncio.Event().wait()  # wedged, well inside its timeout

    settings = {
        "runtime": {"stall_timeout_s": 1.0, "shutdown_timeout_s": 0.1},
        "handler": {"timeout_s": 3600},
    }
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wedged.wait()
        await w.source.revoke([("t", 1)])
        await wait_until(lambda: w.watchdog.stalled is not None, timeout_s=10)
        assert "t-0" in w.watchdog.stalled
        assert w.exit_code == EXIT_STALLED
        assert w.health.readiness()[0] is False


def test_the_stack_dump_names_this_thread():
    assert "thread MainThread" in stacks()


async def test_the_stack_dump_follows_a_task_down_its_await_chain():
    async def inner_wait_for_coordinator(event):
        await event.wait()

    async def outer(event):
        await inner_wait_for_coordinator(event)

    event = asyncio.Event()
    task = asyncio.create_task(outer(event), name="deep")
    await asyncio.sleep(0)
    try:
        dump = stacks()
        assert "task deep" in dump and "inner_wait_for_coordinator" in dump
    finally:
        event.set()
        await task
