"""librdkafka: where a partition being taken starts (`start_offsets`). A partition that
`committed()` answers with an error reads offset -1001, as one without a checkpoint does:
taken as such under `latest`, it started at the end and that start was committed over
the checkpoint that could not be read, skipping every record between (adversary B12's
lead, from the code: the broker answers `UNSTABLE_OFFSET_COMMIT` per partition while a
transaction's offsets are pending)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.librdkafka_calls import CheckpointUnread, start_offsets


@dataclass
class Answer:
    """One partition of `committed()`'s answer (confluent's `error` is read-only)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class Consumer:
    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers

    def committed(self, partitions: list[RdTopicPartition], timeout: float) -> list[Answer]:
        return self.answers

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return 0, 40


def latest() -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate(
        {"kind": "kafka", "topics": ["t"], "starting_position": "latest", "client": "librdkafka"}
    )


def test_a_partition_without_checkpoint_starts_at_the_end_under_latest():
    out, fresh = start_offsets(
        Consumer([Answer("t", 0, -1001), Answer("t", 1, 12)]), [], latest(), 1.0
    )
    assert [(tp.partition, tp.offset) for tp in out] == [(0, 40), (1, 12)]
    assert [tp.partition for tp in fresh] == [0]


def test_a_checkpoint_that_could_not_be_read_is_never_taken_for_none():
    unstable = KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT)
    consumer = Consumer([Answer("t", 0, -1001, unstable), Answer("t", 1, 12)])
    with pytest.raises(CheckpointUnread, match="t-0"):
        start_offsets(consumer, [], latest(), 1.0)
