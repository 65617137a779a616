"""`unless_stopped`: a start that waits (for a broker) is cut short by a stop request."""

from __future__ import annotations

import asyncio

import pytest

from worker.runtime.deadline import unless_stopped


async def test_a_stop_request_cancels_the_waiting_step_and_returns_quietly():
    stop, cancelled = asyncio.Event(), asyncio.Event()

    async def waits_for_ever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = asyncio.create_task(unless_stopped(waits_for_ever(), stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert cancelled.is_set()


async def test_a_step_that_fails_raises_its_own_error():
    async def fails() -> None:
        raise ValueError("no broker")

    with pytest.raises(ValueError, match="no broker"):
        await unless_stopped(fails(), asyncio.Event())


async def test_a_step_that_finishes_is_not_cancelled():
    done: list[bool] = []

    async def finishes() -> None:
        done.append(True)

    await unless_stopped(finishes(), asyncio.Event())
    assert done == [True]
