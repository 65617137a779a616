"""Exactly once and the start commit.

A commit in a transaction waits for the request a cancelled commit of the consumer left
in flight for its partitions (`CancelledCommits.settled`). The two go on different
connections; landing after the transaction, the start would move the checkpoint back (on
the real broker: tests/adversary/test_start_commit_cut_off, 10 of 10 a partition handled
again). And a transaction aborted before its commit leaves a start it passed owed. The
consumer is a stand-in shaped as aiokafka's (`commit` shields `_do_commit_offsets`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from tests.unit.test_kafka_start_commit import END, TP1, Listener, aiokafka_source
from worker.outputs.sink import OutputsFailed
from worker.outputs.transactions import TransactionAborted
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


@pytest.mark.parametrize("landed", [False, True], ids=["aborted", "in_doubt"])
async def test_a_start_stays_owed_while_transactions_fail_before_their_commit(landed: bool):
    """The start commit failed (a blip at the take); then every transaction of the
    partition fails (an output the topic refuses). One aborted before its commit landed
    nothing: the start is still owed, and the round's flush sends it. Before the fix it
    was owed no more from the first such transaction on: a worker stopped then left no
    checkpoint, and the next one (latest) started at the end, past every record written
    since the start. One that failed in its commit may have landed: the start is not
    sent after it (the checkpoint would move back)."""
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    consumer.refuse = KafkaConnectionError("blip")
    await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP1})
    consumer.refuse = None
    failed = OutputsFailed if landed else TransactionAborted

    async def transaction(offsets: dict[TopicPartition, Any], group_id: str) -> None:
        raise failed("outputs: transaction aborted: MessageSizeTooLargeError")

    for _ in range(2):  # the committer's rounds, each with its flush
        with pytest.raises(OutputsFailed):
            await source.commit_in_transaction({TP1: END + 2}, transaction)
        await source.flush_notes()
    sent = [e[1] for e in events if e[0] == "commit"]
    assert sent == ([] if landed else [{TP1: END}])
