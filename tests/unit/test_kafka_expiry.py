"""Telling offsets the log deleted from a compacted topic's holes and transaction markers
(`worker.sources.kafka.expiry`); the real broker's side is
tests/integration/test_kafka_expired_offsets.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.observe.metrics import Metrics
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.expiry import Continuity, ExpiredOffsets, gap_expired
from worker.sources.kafka.librdkafka_calls import read_marks
from worker.sources.kafka.librdkafka_conf import consumer_conf
from worker.sources.kafka.source import KafkaSource

TP = TopicPartition("t", 0)


@dataclass
class Rec:
    offset: int


def chunk(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


@pytest.mark.parametrize(
    ("first", "expected", "low", "lost"),
    [
        (40, 10, 40, 30),  # reset to the log start after a deletion
        (45, 10, 40, 30),  # the oldest left was compacted away too: only the deletion counts
        (40, 10, 60, 30),  # the log start moved on again since: what came is not lost
        (12, 10, 0, 0),  # a compacted topic's hole: the log start is far behind
        (11, 10, 5, 0),  # a transaction marker
        (10, 10, 40, 0),  # no gap: the records before the log start were read already
    ],
)
def test_only_offsets_the_log_start_moved_past_are_lost(first, expected, low, lost):
    assert gap_expired(first, expected, low) == lost


def test_a_partitions_records_after_a_reset_are_told_from_its_holes():
    lows = {TP: 0}
    continuity = Continuity(lows.get)
    continuity.start(TP, 10)
    assert continuity.after({TP: chunk(10, 11, 13)}) == {}
    assert continuity.after({TP: chunk(15, 16)}) == {}, "a hole, the log start behind it"
    lows[TP] = 40
    assert continuity.after({TP: chunk(40, 41)}) == {TP: (17, 40)}
    assert continuity.after({TP: chunk(42)}) == {}, "counted once"


def test_an_unknown_log_start_or_a_partition_never_started_counts_nothing():
    continuity = Continuity(lambda tp: None)
    continuity.start(TP, 0)
    assert continuity.after({TP: chunk(50)}) == {}
    other = TopicPartition("t", 1)
    assert Continuity(lambda tp: 100).after({other: chunk(90)}) == {}


def test_the_loss_is_said_and_counted_and_a_position_past_the_end_only_warned(caplog):
    metrics = Metrics()
    expired = ExpiredOffsets("kafka")
    expired.attach(metrics)
    with caplog.at_level(logging.WARNING, logger="worker.source.kafka"):
        assert expired.passed("t-0", 10, 40) == 30
        assert expired.passed("t-0", 50, 0) == 0
    levels = [(r.levelno, r.getMessage().split()[0]) for r in caplog.records]
    assert levels == [(logging.ERROR, "event=offsets_expired"),
                      (logging.WARNING, "event=position_past_end")]  # fmt: skip
    value = metrics.registry.get_sample_value(
        "worker_offsets_expired_total", {"source": "kafka", "partition": "t-0"}
    )
    assert value == 30


def test_a_reset_to_an_emptied_log_is_told_by_the_end_reached():
    """DeleteRecords to the high watermark: librdkafka resets and serves no record, only
    the partition's end; its position stays unset. The end says the loss (once) and where
    reading stands (`reached`, the position the settler may commit)."""
    low = {TP: 100}
    c = Continuity(low.get)
    c.start(TP, 10)
    assert c.reached(TP) == 10
    assert c.after({}, {TP: 100}) == {TP: (10, 100)}
    assert c.reached(TP) == 100
    assert c.after({}, {TP: 100}) == {}  # said once
    # Records, then their end, in one call: the end is where they ended, nothing lost.
    assert c.after({TP: chunk(100, 101)}, {TP: 102}) == {}
    assert c.reached(TP) == 102


def test_an_end_past_markers_or_holes_moves_reading_on_counting_nothing():
    low = {TP: 0}
    c = Continuity(low.get)
    c.start(TP, 0)
    assert c.after({TP: chunk(0, 1, 2)}, {TP: 4}) == {}  # a commit marker at 3
    assert c.reached(TP) == 4
    assert c.reached(TopicPartition("t", 9)) == -1


def test_offsets_met_again_after_a_rebalance_are_counted_once(caplog):
    """Seen on the real broker: a partition reset to its emptied log, revoked before the
    settler committed its end (the revoke commits the last record handled), assigned
    back, reads from that checkpoint and meets the same deleted offsets: 50 counted
    twice. Counted once per process; a cut further on counts only what is new."""
    metrics = Metrics()
    expired = ExpiredOffsets("kafka")
    expired.attach(metrics)
    with caplog.at_level(logging.WARNING, logger="worker.source.kafka"):
        assert expired.passed("t-3", 1450, 1500) == 50
        assert expired.passed("t-3", 1450, 1500) == 0
        assert expired.passed("t-3", 1450, 1600) == 100
        assert expired.passed("t-4", 1450, 1500) == 50
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and "position=1500 oldest=1600 offsets=100" in said[1]
    value = metrics.registry.get_sample_value(
        "worker_offsets_expired_total", {"source": "kafka", "partition": "t-3"}
    )
    assert value == 150


@pytest.mark.parametrize("starting_position", ["latest", "trim_horizon"])
async def test_neither_client_resets_a_checkpoint_the_log_deleted_past_to_its_end(
    starting_position: str,
):
    """`starting_position` says where a group with no checkpoint starts (the sources seek
    there themselves); a checkpoint the log deleted past must go on from the oldest record
    left, never from the end: reset to the end, every record still in the log is skipped."""
    settings = {"topics": ["t"], "starting_position": starting_position}
    rdk = consumer_conf(KafkaSourceConfig.model_validate({**settings, "client": "librdkafka"}))
    assert rdk["auto.offset.reset"] == "earliest"  # `Continuity` counts the gap it leaves
    aio = KafkaSource(KafkaSourceConfig.model_validate(settings))
    try:  # "none": the out-of-range error reaches `Refetch`, which seeks the oldest left
        assert aio._consumer._auto_offset_reset == "none"
    finally:
        await aio._consumer.stop()


class NothingServed:
    """librdkafka reset to a log with no record left (deleted to its end, 50): nothing is
    served, so its position stays unset; its partition end event came (`reached`)."""

    def position(self, partitions: list[Any]) -> list[Any]:
        return [RdTopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]

    def get_watermark_offsets(self, partition: Any, cached: bool) -> tuple[int, int]:
        return (50, 50)


def test_librdkafka_reading_stands_at_the_partition_end_it_reached():
    """Where the worker reads from after a log deleted to its end: the end reached, not
    the unset position, or the partition is never committed past what was counted lost."""
    reached = {TP: 50}
    marks = read_marks(NothingServed(), [TP], lambda tp: reached.get(tp, -1))
    assert marks == {TP: (50, 50)}
