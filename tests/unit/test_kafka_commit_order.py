"""Exactly once: a commit in a transaction waits for the request a cancelled commit of
the consumer left in flight for its partitions (`CancelledCommits.settled`). The two go
on different connections; landing after the transaction, the start would move the
checkpoint back (on the real broker: tests/adversary/test_start_commit_cut_off, 10 of 10
a partition handled again, outputs sent twice). The consumer is a stand-in shaped as
aiokafka's (`commit` shields `_do_commit_offsets`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from tests.unit.test_kafka_start_commit import END, TP1, Listener, aiokafka_source
from worker.sources.kafka import start_commit
from worker.sources.kafka.aiokafka_rebalance import RebalanceBridge


async def test_a_transaction_is_sent_after_the_start_commit_its_bound_cut_off(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(start_commit, "START_COMMIT_TIMEOUT_S", 0.01)
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    held = asyncio.Event()

    async def _do_commit_offsets(offsets: dict[TopicPartition, Any]) -> None:
        await held.wait()  # its connection stalls
        events.append(("landed", {tp: getattr(o, "offset", o) for tp, o in offsets.items()}))

    async def commit(offsets: dict[TopicPartition, Any]) -> None:
        await asyncio.shield(_do_commit_offsets(offsets))

    consumer.commit = commit  # type: ignore[method-assign]
    await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP1})

    async def transaction(offsets: dict[TopicPartition, Any], group_id: str) -> None:
        events.append(("transaction", {tp: getattr(o, "offset", o) for tp, o in offsets.items()}))

    sending = asyncio.create_task(source.commit_in_transaction({TP1: END + 2}, transaction))
    for _ in range(3):
        await asyncio.sleep(0)  # the transaction's turn, if it does not wait
    held.set()  # the start's request reaches the broker
    await sending
    landed = [e for e in events if e[0] in ("landed", "transaction")]
    assert landed == [("landed", {TP1: END}), ("transaction", {TP1: END + 3})]
