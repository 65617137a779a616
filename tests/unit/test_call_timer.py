"""One timer per lane for all its handler calls: each call still gets its own deadline."""

import asyncio

from worker.config import HandlerConfig
from worker.handling.invoker import Invoker
from worker.testing import make_batch

BATCH = make_batch([b"1"])


async def test_a_call_after_the_first_deadline_passed_gets_its_own_full_timeout():
    """The timer armed for the first call (deadline 1.0 s) fires inside the second, which
    started at 0.6 s and may run until 1.6 s: it re-arms instead of cancelling it."""
    calls = []

    async def handler(batch):
        calls.append(1)
        if len(calls) == 2:
            await asyncio.sleep(0.6)  # the handler's own work, ending at 1.2 s

    async def lane() -> bool:
        invoker = Invoker(handler, HandlerConfig(timeout_s=1.0))
        assert (await invoker.invoke(BATCH)).ok
        await asyncio.sleep(0.6)  # idle between calls
        return (await invoker.invoke(BATCH)).ok

    assert await asyncio.create_task(lane())


async def test_an_overrunning_call_is_cancelled_and_the_next_call_of_the_lane_runs_clean():
    async def lane() -> list[bool]:
        invoker = Invoker(handler, HandlerConfig(timeout_s=0.05))
        first = await invoker.invoke(BATCH)  # overruns
        second = await invoker.invoke(make_batch([b"fast"]))
        await asyncio.sleep(0)  # no cancel request left over for the lane
        return [first.timed_out, not first.ok, second.ok, not second.timed_out]

    async def handler(batch):
        if batch.records[0].value == b"1":
            await asyncio.Event().wait()

    assert await asyncio.create_task(lane()) == [True, True, True, True]


async def test_stopping_the_lane_during_a_call_is_a_cancel_not_a_timeout():
    entered = asyncio.Event()

    async def handler(batch):
        entered.set()
        await asyncio.Event().wait()

    invoker = Invoker(handler, HandlerConfig(timeout_s=30))
    task = asyncio.create_task(invoker.invoke(BATCH))
    await entered.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the stop was swallowed as a handler outcome")
