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
from aiokafka import TopicPartition

from worker.sources.kafka.aiokafka_orphans import CancelledCommits

TP1 = TopicPartition("t", 1)


def label(tp: TopicPartition) -> str:
    return f"{tp.topic}-{tp.partition}"


class Consumer:
    def __init__(self, error: Exception | None) -> None:
        self.answer = asyncio.Event()
        self.error = error

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        await asyncio.shield(self._do_commit_offsets(offsets or {TP1: 5}))

    async def _do_commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
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
                await CancelledCommits().commit(consumer.commit(), [TP1], label)
        consumer.answer.set()  # the request ends later, unawaited
        for _ in range(3):
            await asyncio.sleep(0)
    gc.collect()  # asyncio says an unretrieved exception when the task is collected
    assert f"event=commit_settled_after_cancel partitions=t-1 {line}" in caplog.text
    assert unretrieved == []


async def _left_in_flight(commits: CancelledCommits, error: Exception | None) -> None:
    consumer = Consumer(error)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await commits.commit(consumer.commit(), [TP1], label)
    consumer.answer.set()
    for _ in range(3):
        await asyncio.sleep(0)


async def test_in_an_outage_the_first_failure_of_a_run_is_a_warning_the_next_ones_not(
    caplog: pytest.LogCaptureFixture,
):
    """Every commit round's request is left so in an outage: one warning until one lands."""
    commits = CancelledCommits()
    with caplog.at_level(logging.DEBUG, "worker.source.kafka"):
        for error in (OSError("a"), OSError("b"), None, OSError("c")):
            await _left_in_flight(commits, error)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split("error=")[1][:3] for m in warned] == ["'a'", "'c'"]
    assert len(caplog.records) == 4


async def test_another_commits_request_started_meanwhile_is_not_said_as_this_ones(
    caplog: pytest.LogCaptureFixture,
):
    """A start commit waits for aiokafka's commit lock while a committer round's request
    (another partition) goes out; the start commit is cut off. That request is the
    round's, awaited by it: it must not be said as the start's ('landed': it was not)."""
    commits, round_consumer = CancelledCommits(), Consumer(None)
    lock = asyncio.Event()

    async def start_commit() -> None:
        await lock.wait()  # never gets the lock

    with caplog.at_level(logging.INFO, "worker.source.kafka"):
        cut = asyncio.create_task(commits.commit(start_commit(), [TP1], label))
        await asyncio.sleep(0)  # the start commit is waiting
        other = asyncio.create_task(round_consumer.commit({TopicPartition("t", 0): 9}))
        await asyncio.sleep(0)  # the round's request is in flight
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        round_consumer.answer.set()
        await other
        await asyncio.sleep(0)
    assert "commit_settled_after_cancel" not in caplog.text


async def test_the_transactions_of_many_partitions_waiting_for_one_request_say_so_once(
    caplog: pytest.LogCaptureFixture,
):
    """Exactly once commits each partition in a transaction of its own: the start commit
    of 200 partitions cut off, each of the round's 200 transactions waits for its request
    (`settled`); one line says so, not one a partition."""
    commits, consumer = CancelledCommits(), Consumer(None)
    tps = [TopicPartition("t", p) for p in range(200)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await commits.commit(consumer.commit(dict.fromkeys(tps, 5)), tps, label)
    with caplog.at_level(logging.INFO, "worker.source.kafka"):
        waiting = [asyncio.create_task(commits.settled([tp])) for tp in tps]
        await asyncio.sleep(0)  # every transaction is waiting
        assert not any(w.done() for w in waiting)
        consumer.answer.set()
        await asyncio.gather(*waiting)
    assert caplog.text.count("event=commit_waits_for_cancelled") == 1
    assert caplog.text.count("event=commit_settled_after_cancel") == 1
    assert commits._left == {} and commits._said == set()  # nothing kept once it ended
