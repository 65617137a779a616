"""The shutdown budget keeps time for closing the source after the final commit.

In a broker outage the final commit waits out all it is given. On librdkafka the close
then began after the budget, and the backstop ended the worker before
`shutdown_complete` (seen in the outage test under load)."""

import asyncio
import time

from worker.runtime.deadline import Deadline
from worker.runtime.worker import CLOSE_RESERVE_S
from worker.testing import MemoryBroker, running_worker

TOPIC = "t"
BUDGET_S = 2.0


def test_keeping_takes_the_reserve_off_but_never_more_than_half_of_what_is_left():
    now = [100.0]
    deadline = Deadline(10.0, lambda: now[0])
    assert deadline.keeping(1.0).left() == 9.0
    now[0] = 109.0  # 1 s left: half of it is kept
    assert deadline.keeping(1.0).left() == 0.5
    now[0] = 120.0  # spent: nothing to keep, nothing given
    assert deadline.keeping(1.0).left() == 0.0


async def test_the_source_is_stopped_with_the_reserve_left_while_the_final_commit_hangs():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    handled = asyncio.Event()

    async def handler(batch) -> None:
        handled.set()

    settings = {"batching": {"batch_size": 5}, "runtime": {"shutdown_timeout_s": BUDGET_S}}
    stopped_at: list[float] = []
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        source = w.source
        stop = source.stop

        async def hanging_commit(offsets) -> None:  # the coordinator is gone
            await asyncio.Event().wait()

        async def timed_stop() -> None:
            stopped_at.append(time.monotonic())
            await stop()

        source.commit = hanging_commit
        source.stop = timed_stop
        for i in range(5):
            broker.produce(TOPIC, b"%d" % i, key=b"k", partition=0)
        await handled.wait()
        started = time.monotonic()
        w.request_exit()
    (at,) = stopped_at
    assert at - started <= BUDGET_S - CLOSE_RESERVE_S + 0.4, f"stopped at {at - started:.2f}s"
    assert broker.committed("test", TOPIC, 0) is None  # nothing claimed that was not sent


async def test_the_budget_counts_from_the_exit_request_not_from_when_the_main_loop_saw_it():
    """Adversary: the backstop counts from the request (SIGTERM), the shutdown's deadline
    counted from when the main loop next looked, after a fetch that could take 0.7 s
    (librdkafka's bounded fetch while its poller is held) or a poll error's 1 s backoff:
    a batch drained to the full budget left the close too little of the backstop's grace."""
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    inside = asyncio.Event()

    async def handler(batch) -> None:  # in flight for longer than any budget
        inside.set()
        await asyncio.Event().wait()

    budget_s = 3.0  # what is left after the gap keeps the whole reserve
    settings = {"batching": {"batch_size": 1}, "runtime": {"shutdown_timeout_s": budget_s}}
    stopped_at: list[float] = []
    slow = {"on": False}
    entered_slow_fetch = asyncio.Event()
    async with running_worker(handler, broker, [TOPIC], settings) as w:
        source = w.source
        fetch, stop = source.fetch, source.stop

        async def slow_fetch(timeout_s: float):
            if slow["on"]:
                entered_slow_fetch.set()
                await asyncio.sleep(GAP_S)  # the poller is held: this fetch ends late
            return await fetch(timeout_s)

        async def timed_stop() -> None:
            stopped_at.append(time.monotonic())
            await stop()

        source.fetch = slow_fetch
        source.stop = timed_stop
        broker.produce(TOPIC, b"0", key=b"k", partition=0)
        await inside.wait()
        slow["on"] = True
        await entered_slow_fetch.wait()
        asked = time.monotonic()
        w.request_exit()
    (at,) = stopped_at
    # The drain ends at the budget less the reserve, counted from the request.
    assert at - asked <= budget_s - CLOSE_RESERVE_S + 0.3, f"stopped at {at - asked:.2f}s"


#: How late the main loop sees the request in the test above.
GAP_S = 0.7


def test_the_backstop_leaves_a_spent_budget_the_least_time_its_steps_take():
    """Adversary: with `shutdown_timeout_s` 0 (or 0.1) in a broker outage, the final commit
    and the client's close each still get MIN_STEP_S and wait it out; the backstop at the
    budget + 1 s ended the worker before `shutdown_complete` (librdkafka, on the real
    broker: tests/integration/test_kafka_outage.py, its smallest budgets)."""
    from worker.runtime.deadline import MIN_STEP_S
    from worker.runtime.run import BACKSTOP_GRACE_S, backstop_after_s

    for budget_s in (0.0, 0.1, 0.5):
        assert backstop_after_s(budget_s) >= 2 * MIN_STEP_S + BACKSTOP_GRACE_S
    assert backstop_after_s(30.0) == 30.0 + BACKSTOP_GRACE_S
