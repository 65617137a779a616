"""A partition the group has no checkpoint of gets its start committed while it is taken,
after the listener took it and before its records flow, on both clients (`start_commit`).
The consumers are stand-ins that record calls; the loss this prevents is shown on the
real broker in tests/integration/test_kafka_fresh_group_start."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.sources.kafka.aiokafka_rebalance import RebalanceBridge
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.librdkafka_source import LibrdkafkaSource
from worker.sources.kafka.source import KafkaSource

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)
CHECKPOINT, END = 7, 12  # TP0's checkpoint; the end of both


class AiokafkaStandIn:
    """TP0 has a checkpoint, TP1 none (until `checkpoint_later`); calls are recorded."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.checkpoints: dict[TopicPartition, int] = {TP0: CHECKPOINT}
        self.held: set[TopicPartition] = set()
        self.refuse: Exception | None = None

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.checkpoints.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.events.append(("seek", tp, offset))

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, END)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.refuse is not None:
            raise self.refuse
        held = sorted(self.held)
        offsets = {tp: getattr(o, "offset", o) for tp, o in offsets.items()}  # a note or not
        self.events.append(("commit", offsets, held))

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def pause(self, *tps: TopicPartition) -> None:
        self.held.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.held.difference_update(tps)
        self.events.append(("resume", sorted(tps)))


class Listener:
    def __init__(self, events: list[Any], on_taking: Any = None) -> None:
        self.events = events
        self.on_taking = on_taking

    async def on_assigned(self, partitions: list[TopicPartition]) -> None:
        if self.on_taking is not None:
            await self.on_taking(partitions)
        self.events.append(("listener", sorted(partitions)))


def aiokafka_source(events: list[Any]) -> tuple[KafkaSource, AiokafkaStandIn]:
    config = KafkaSourceConfig(
        bootstrap_servers=["127.0.0.1:9"], topics=["t"], starting_position="latest"
    )
    source = KafkaSource(config)
    consumer = AiokafkaStandIn(events)
    source._consumer = consumer  # type: ignore[assignment]
    return source, consumer


async def test_aiokafka_commits_the_start_of_a_partition_without_checkpoint_before_it_flows():
    events: list[Any] = []
    source, _ = aiokafka_source(events)
    await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP0, TP1})
    commits = [e for e in events if e[0] == "commit"]
    # Only TP1's, at its start (the end: `latest`), after the listener took both, while
    # both were still held: no record of TP1 could have been read before.
    assert commits == [("commit", {TP1: END}, [TP0, TP1])]
    order = [e[0] for e in events if e[0] != "seek"]
    assert order == ["listener", "commit", "resume"]


async def test_aiokafka_a_checkpoint_read_again_after_the_fence_is_not_overwritten():
    """Exactly once reads the checkpoint again once the earlier owner's producers are
    fenced (`resume_from_committed`, inside the listener): a transaction it committed
    meanwhile counts, and the start decided before must not be committed over it."""
    events: list[Any] = []
    source, consumer = aiokafka_source(events)

    async def fence(partitions: list[TopicPartition]) -> None:
        consumer.checkpoints[TP1] = 9  # the earlier owner's last transaction landed
        await source.resume_from_committed(partitions)

    await RebalanceBridge(source, Listener(events, fence)).on_partitions_assigned({TP0, TP1})
    assert [e for e in events if e[0] == "commit"] == []
    assert ("seek", TP1, 9) in events


async def test_aiokafka_a_refused_start_commit_is_logged_and_reading_starts_anyway(
    caplog: pytest.LogCaptureFixture,
):
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    consumer.refuse = KafkaConnectionError("coordinator gone")
    with caplog.at_level(logging.WARNING, "worker.source.kafka"):
        await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP0, TP1})
    assert "event=start_not_committed partitions=t-1" in caplog.text
    assert ("resume", [TP0, TP1]) in events and source._failure is None


class LibrdkafkaStandIn:
    """TP0 has a checkpoint, TP1 none; commits are recorded."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.refuse: Exception | None = None

    def committed(self, partitions: list[RdTopicPartition], timeout: float) -> list[Any]:
        found = {0: CHECKPOINT, 1: -1001}
        return [RdTopicPartition(tp.topic, tp.partition, found[tp.partition]) for tp in partitions]

    def get_watermark_offsets(self, tp: RdTopicPartition, **kw: Any) -> tuple[int, int]:
        return (0, END)

    def commit(self, offsets: list[RdTopicPartition], asynchronous: bool) -> list[Any]:
        if self.refuse is not None:
            raise self.refuse
        self.events.append(("commit", [(tp.partition, tp.offset) for tp in offsets]))
        return offsets


def librdkafka_source(events: list[Any]) -> tuple[LibrdkafkaSource, LibrdkafkaStandIn]:
    config = KafkaSourceConfig.model_validate(
        {"topics": ["t"], "client": "librdkafka", "starting_position": "latest"}
    )
    source = LibrdkafkaSource(config)
    consumer = LibrdkafkaStandIn(events)
    source._consumer = consumer  # type: ignore[assignment]
    source._loop = asyncio.get_running_loop()
    source._listener = Listener(events)  # type: ignore[assignment]
    return source, consumer


async def test_librdkafka_commits_the_start_of_a_partition_without_checkpoint_before_assigning():
    events: list[Any] = []
    source, consumer = librdkafka_source(events)
    asked = [RdTopicPartition("t", 0), RdTopicPartition("t", 1)]
    starts = source.starts(consumer, asked)  # type: ignore[arg-type]
    assert [tp.offset for tp in starts] == [CHECKPOINT, END]
    await source.assigned([TP0, TP1], [tp.offset for tp in starts])
    # The bridge assigns the partitions to the client only after `assigned` returned.
    assert events == [("listener", [TP0, TP1]), ("commit", [(1, END)])]


async def test_aiokafka_a_start_never_committed_holds_when_its_partition_is_taken_again():
    """The start commit refused (the worker cut off, then expired by the group), the
    partition revoked and taken again with still no checkpoint: reading starts at the
    first start, not at the end as it is now (the records between were owed)."""
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    bridge = RebalanceBridge(source, Listener(events))
    consumer.refuse = KafkaConnectionError("cut off")
    await bridge.on_partitions_assigned({TP1})
    source.forget([TP1])  # revoked (aiokafka) or lost
    consumer.refuse = None
    consumer.end_offsets = lambda tps: _ends(tps, END + 10)  # type: ignore[method-assign]
    events.clear()
    await bridge.on_partitions_assigned({TP1})
    assert ("seek", TP1, END) in events and ("commit", {TP1: END}, [TP1]) in events


async def _ends(tps: list[TopicPartition], end: int) -> dict[TopicPartition, int]:
    return dict.fromkeys(tps, end)


async def test_librdkafka_a_start_never_committed_holds_when_its_partition_is_taken_again():
    events: list[Any] = []
    source, consumer = librdkafka_source(events)
    asked = [RdTopicPartition("t", 1)]
    source.starts(consumer, asked)  # type: ignore[arg-type]
    source._announced.add(TP1)
    source._forget([TP1])  # lost before its start was committed
    consumer.get_watermark_offsets = lambda tp, **kw: (0, END + 10)  # type: ignore[method-assign]
    assert [tp.offset for tp in source.starts(consumer, asked)] == [END]  # type: ignore[arg-type]


# -- a start not committed is owed by the next commit round (a final commit among them) ---
def commits(events: list[Any]) -> list[Any]:
    return [e[1] for e in events if e[0] == "commit"]


async def test_aiokafka_a_start_not_committed_is_sent_by_the_final_commit():
    """SIGTERM inside the start commit, which never lands: the release's final commit has
    nothing handled to send; it sends the start (else the next worker, latest, starts at
    the end: tests/adversary/test_start_commit_cut_off)."""
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    consumer.refuse = KafkaConnectionError("reset")
    await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP0, TP1})
    consumer.refuse = None
    events.clear()
    await source.flush_notes()  # what `Committer.commit_now` runs when nothing moved
    assert commits(events) == [{TP1: END}]
    events.clear()
    await source.flush_notes()  # it landed: owed no more
    assert commits(events) == []


async def test_aiokafka_a_start_is_never_sent_after_a_commit_past_it(
    caplog: pytest.LogCaptureFixture,
):
    """A commit past the start was sent and not acknowledged: it may have landed, and the
    start sent after it would move the checkpoint back (records handled again)."""
    events: list[Any] = []
    source, consumer = aiokafka_source(events)
    consumer.refuse = KafkaConnectionError("reset")
    await RebalanceBridge(source, Listener(events)).on_partitions_assigned({TP1})
    with caplog.at_level(logging.WARNING, "worker.source.kafka"), pytest.raises(ConnectionError):
        await source.flush_notes()  # the start, still refused: said
    assert "event=start_not_committed partitions=t-1@12 error=" in caplog.text
    with pytest.raises(ConnectionError):
        await source.commit({TP1: END + 2})  # three handled, the commit in doubt
    consumer.refuse = None
    events.clear()
    await source.flush_notes()
    assert commits(events) == []


async def test_librdkafka_a_start_not_committed_is_sent_by_the_final_commit():
    events: list[Any] = []
    source, consumer = librdkafka_source(events)
    asked = [RdTopicPartition("t", 1)]
    starts = source.starts(consumer, asked)  # type: ignore[arg-type]
    consumer.refuse = KafkaException(KafkaError(KafkaError._TRANSPORT))
    await source.assigned([TP1], [tp.offset for tp in starts])
    assert commits(events) == []
    consumer.refuse = None
    await source.flush_notes()
    assert commits(events) == [[(1, END)]]
    with pytest.raises(ConnectionError):
        consumer.refuse = KafkaException(KafkaError(KafkaError._TRANSPORT))
        await source.commit({TP1: END + 2})
    consumer.refuse = None
    await source.flush_notes()  # landed before: owed no more
    assert commits(events) == [[(1, END)]]


async def test_librdkafka_a_start_is_never_sent_after_a_commit_past_it():
    events: list[Any] = []
    source, consumer = librdkafka_source(events)
    starts = source.starts(consumer, [RdTopicPartition("t", 1)])  # type: ignore[list-item]
    consumer.refuse = KafkaException(KafkaError(KafkaError._TRANSPORT))
    await source.assigned([TP1], [tp.offset for tp in starts])
    with pytest.raises(ConnectionError):
        await source.commit({TP1: END + 2})
    consumer.refuse = None
    await source.flush_notes()
    assert commits(events) == []
