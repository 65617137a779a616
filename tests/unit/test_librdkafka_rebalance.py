"""librdkafka's rebalance callbacks run on the poller thread inside `consume()`: each
must hand over to the event loop and block until the listener is done, and only then
let the client (un)assign. Checked here with a consumer stand-in that records the
order of calls, the callbacks run on a real second thread as librdkafka runs them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import TopicPartition
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.sources.kafka.librdkafka_calls import ConsumerClosed, PollerCalls
from worker.sources.kafka.librdkafka_rebalance import RebalanceBridge

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)
RD = [RdTopicPartition("t", 0), RdTopicPartition("t", 1)]


class Owner:
    """The source's side: each step records itself and waits a little on the loop."""

    def __init__(self, events: list[str], fail_on: str = "") -> None:
        self.events = events
        self.incremental = False
        self.closing = False
        self.failed: list[str] = []
        self._fail_on = fail_on

    def starts(self, consumer: Any, partitions: list[RdTopicPartition]) -> list[Any]:
        return [RdTopicPartition(tp.topic, tp.partition, 5) for tp in partitions]

    async def _step(self, name: str, partitions: list[TopicPartition]) -> None:
        await asyncio.sleep(0.05)  # the listener drains and commits meanwhile
        if name == self._fail_on:
            raise RuntimeError(f"{name} failed")
        self.events.append(f"{name} {len(partitions)}")

    async def assigned(self, partitions: list[TopicPartition], starts: list[int]) -> None:
        assert starts == [5] * len(partitions)
        await self._step("assigned", partitions)

    async def revoked(self, partitions: list[TopicPartition]) -> None:
        await self._step("revoked", partitions)

    async def lost(self, partitions: list[TopicPartition]) -> None:
        await self._step("lost", partitions)

    def fail(self, doing: str, partitions: Sequence[TopicPartition], exc: BaseException) -> None:
        self.failed.append(f"{doing}: {exc}")


class Consumer:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def assign(self, partitions: list[RdTopicPartition]) -> None:
        self.events.append(f"client assign {[tp.offset for tp in partitions]}")

    def unassign(self) -> None:
        self.events.append("client unassign")


def bridged(owner: Any) -> RebalanceBridge:
    return RebalanceBridge(owner, asyncio.get_running_loop(), PollerCalls(ThreadPoolExecutor(1)))


async def on_thread(callback: Any, *args: Any) -> None:
    """As librdkafka calls it: on another thread, while the loop keeps running."""
    await asyncio.get_running_loop().run_in_executor(None, callback, *args)


async def test_an_assignment_reaches_the_listener_before_the_client_assigns_it():
    events: list[str] = []
    bridge = bridged(Owner(events))
    await on_thread(bridge.on_assign, Consumer(events), RD)
    assert events == ["assigned 2", "client assign [5, 5]"]


async def test_a_member_given_nothing_first_is_told_once_so_an_idle_pod_gets_ready():
    """More members than partitions: the first assignment is empty. The listener must
    hear of it (readiness waits for a first assignment: the idle pod stayed unready for
    ever, tests/integration/test_kafka_scale_out); later empty ones are the client's."""
    events: list[str] = []
    bridge = bridged(Owner(events))
    await on_thread(bridge.on_assign, Consumer(events), [])
    await on_thread(bridge.on_assign, Consumer(events), [])
    assert events == ["assigned 0", "client assign []", "client assign []"]


async def test_a_revoke_waits_for_the_listener_then_unassigns():
    events: list[str] = []
    bridge = bridged(Owner(events))
    await on_thread(bridge.on_revoke, Consumer(events), RD)
    assert events == ["revoked 2", "client unassign"]


async def test_lost_partitions_go_to_on_lost_and_are_unassigned():
    events: list[str] = []
    bridge = bridged(Owner(events))
    await on_thread(bridge.on_lost, Consumer(events), RD)
    assert events == ["lost 2", "client unassign"]


async def test_a_failing_assignment_is_never_assigned_and_the_failure_is_kept():
    events: list[str] = []
    owner = Owner(events, fail_on="assigned")
    bridge = bridged(owner)
    await on_thread(bridge.on_assign, Consumer(events), RD)
    assert events == [] and owner.failed == ["taking: assigned failed"]


async def test_a_failing_revoke_still_lets_the_partitions_go_and_is_kept():
    events: list[str] = []
    owner = Owner(events, fail_on="revoked")
    bridge = bridged(owner)
    await on_thread(bridge.on_revoke, Consumer(events), RD)
    assert events == ["client unassign"] and owner.failed == ["revoking: revoked failed"]


async def test_closing_revokes_without_the_listener_it_was_drained_before():
    events: list[str] = []
    owner = Owner(events)
    owner.closing = True
    bridge = bridged(owner)
    await on_thread(bridge.on_revoke, Consumer(events), RD)
    assert events == ["client unassign"]


async def test_a_consumer_call_asked_for_during_a_callback_runs_on_the_callbacks_thread():
    """The revoke's drain commits while the poller thread waits in the callback: the
    commit must run there, before the client unassigns (from another thread it stalls)."""
    events: list[str] = []
    threads: dict[str, int] = {}
    poller = ThreadPoolExecutor(1)
    calls = PollerCalls(poller)

    class Committing(Owner):
        async def revoked(self, partitions: list[TopicPartition]) -> None:
            def commit() -> None:
                threads["commit"] = threading.get_ident()
                events.append("commit")

            await asyncio.wrap_future(calls.submit(commit))
            await super().revoked(partitions)

    class Recording(Consumer):
        def unassign(self) -> None:
            threads["unassign"] = threading.get_ident()
            super().unassign()

    loop = asyncio.get_running_loop()
    bridge = RebalanceBridge(Committing(events), loop, calls)
    # On the poller thread, as librdkafka calls it from inside consume() there: the serve
    # a call queues on the poller cannot run first (on another thread it raced, flaky).
    await loop.run_in_executor(poller, bridge.on_revoke, Recording(events), RD)
    assert events == ["commit", "revoked 2", "client unassign"]
    assert threads["commit"] == threads["unassign"]


async def test_consumer_calls_run_in_order_on_the_poller_and_fail_once_it_is_closed():
    poller = ThreadPoolExecutor(1)
    calls = PollerCalls(poller)
    seen: list[tuple[int, int]] = []
    futures = [calls.submit(lambda i=i: seen.append((i, threading.get_ident()))) for i in range(5)]
    await asyncio.gather(*map(asyncio.wrap_future, futures))
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4] and len({t for _, t in seen}) == 1
    assert seen[0][1] != threading.get_ident()
    poller.shutdown(wait=True)
    late = calls.submit(lambda: seen.append((9, 0)))
    with pytest.raises(ConsumerClosed):
        await asyncio.wrap_future(late)
    assert len(seen) == 5
