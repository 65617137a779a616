"""A commit cancelled by its bound leaves aiokafka's shielded request in flight: how it
ends is logged in one line, never asyncio's `Task exception was never retrieved` with a
traceback (seen on the real broker: tests/adversary/test_start_commit_cut_off). The
consumer is a stand-in shaped as aiokafka's (`commit` shields `_do_commit_offsets`)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from worker.sources.kafka.aiokafka_orphans import commit_watched


class Consumer:
    def __init__(self, error: Exception | None) -> None:
        self.answer = asyncio.Event()
        self.error = error

    async def commit(self) -> None:
        await asyncio.shield(self._do_commit_offsets())

    async def _do_commit_offsets(self) -> None:
        await self.answer.wait()
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConnectionError("closed"), "outcome=failed error='closed'"),
        (None, "outcome=landed"),
    ],
    ids=["failed", "landed"],
)
async def test_a_request_left_by_a_cancelled_commit_is_said_when_it_ends(
    caplog: pytest.LogCaptureFixture, error: Exception | None, line: str
):
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    consumer = Consumer(error)
    with caplog.at_level(logging.INFO, "worker.source.kafka"):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the start commit's bound
                await commit_watched(consumer.commit(), "t-1")
        consumer.answer.set()  # the request ends later, unawaited
        for _ in range(3):
            await asyncio.sleep(0)
    gc.collect()  # asyncio says an unretrieved exception when the task is collected
    assert f"event=commit_settled_after_cancel partitions=t-1 {line}" in caplog.text
    assert unretrieved == []
