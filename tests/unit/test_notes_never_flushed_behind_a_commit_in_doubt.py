"""A commit that raised may have landed (a transaction in doubt, a lost answer): the
dead-letter guard's notes are then not flushed at the position known before it, which
would move the group's offset back behind the commit that landed, and a restart would
redo records whose outputs were already committed (exactly once: seen twice).

The fault is injected at the source's boundary: the commit call raises."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.source import KafkaSource

TP = TopicPartition("t", 0)


def source(monkeypatch) -> tuple[KafkaSource, list[dict]]:
    s = KafkaSource(KafkaSourceConfig(bootstrap_servers=["127.0.0.1:9"], topics=["t"]))
    monkeypatch.setattr(s._consumer, "assignment", lambda: {TP})
    flushed: list[dict] = []

    async def commit(positions) -> None:
        flushed.append(dict(positions))

    monkeypatch.setattr(s, "commit", commit)
    return s, flushed


async def failing(offsets, group_id) -> None:
    raise KafkaError("the answer was lost")


async def landing(offsets, group_id) -> None:
    return None


async def test_no_note_is_flushed_behind_a_commit_that_raised_until_one_lands(monkeypatch):
    s, flushed = source(monkeypatch)
    await s.commit_in_transaction({TP: 9}, landing)  # the group is at 10
    s.remember(TP, "halted after 3 dead letters")
    with pytest.raises(ConnectionError):
        await s.commit_in_transaction({TP: 19}, failing)  # may have landed at 20
    await s.flush_notes()
    assert flushed == []  # not at 10 behind a commit that may be at 20
    await s.commit_in_transaction({TP: 24}, landing)  # carries the note itself
    await s.flush_notes()
    assert flushed == []  # written with that commit: nothing left to flush


async def test_a_note_is_flushed_at_the_committed_position_when_nothing_is_in_doubt(monkeypatch):
    s, flushed = source(monkeypatch)
    await s.commit_in_transaction({TP: 9}, landing)
    s.remember(TP, "halted after 3 dead letters")
    await s.flush_notes()
    assert flushed == [{TP: 9}]
