"""The start's topic check believes any broker that knows the topic, and asks again
for a moment before it calls a topic missing.

In a three-node cluster a worker started right after its topic was created failed
with "not found": the broker it asked had not yet applied the topic's creation. The
fake client below stands for brokers at the boundary (their metadata answers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from worker.sources.kafka import preflight

UNKNOWN, OK = 3, 0  # Kafka's error codes


@dataclass
class _Broker:
    nodeId: int  # aiokafka's name


@dataclass
class _Answer:
    topics: list[tuple[int, str]]


@dataclass
class _Cluster:
    nodes: list[int]

    def brokers(self) -> list[_Broker]:
        return [_Broker(n) for n in self.nodes]


@dataclass
class _Client:
    """Brokers whose answers change over the asks: `answers[node]` per ask, last kept."""

    answers: dict[int, list[dict[str, int]]]
    asked: int = 0
    closed: bool = False
    cluster: _Cluster = field(init=False)

    def __post_init__(self) -> None:
        self.cluster = _Cluster(sorted(self.answers))

    async def send(self, node: int, request: Any) -> _Answer:
        self.asked += 1
        seq = self.answers[node]
        codes = seq.pop(0) if len(seq) > 1 else seq[0]
        return _Answer([(code, topic) for topic, code in codes.items()])

    async def close(self) -> None:
        self.closed = True


def test_a_topic_one_broker_knows_is_not_missing():
    client = _Client({1: [{"t": UNKNOWN}], 2: [{"t": OK}]})
    assert asyncio.run(preflight.missing_topics(client, ["t"])) == []  # type: ignore[arg-type]


def test_a_topic_no_broker_knows_is_missing_with_why():
    client = _Client({1: [{"t": UNKNOWN, "u": OK}], 2: [{"t": UNKNOWN, "u": OK}]})
    missing = asyncio.run(preflight.missing_topics(client, ["t", "u"]))  # type: ignore[arg-type]
    assert missing == ["t (not found)"]


@pytest.fixture
def brokers(monkeypatch: pytest.MonkeyPatch):
    def use(client: _Client) -> _Client:
        async def connected(*_: Any) -> _Client:
            return client

        monkeypatch.setattr(preflight, "connected_client", connected)
        monkeypatch.setattr(preflight, "MISSING_ASK_EVERY_S", 0.01)
        return client

    return use


def test_a_topic_that_appears_on_a_later_ask_is_not_missing(brokers):
    client = brokers(_Client({1: [{"t": UNKNOWN}, {"t": UNKNOWN}, {"t": OK}]}))
    assert asyncio.run(preflight.topics_missing_at({}, ["t"], 1.0, "source")) == []
    assert client.asked == 3 and client.closed


def test_a_topic_missing_for_the_whole_confirm_window_is_reported(brokers, monkeypatch):
    """The window is judged on a clock that moves 0.02 s a reading, so the asks are
    counted exactly (on the real clock a loaded machine's first ask could outlast a short
    window, and the test failed 2 runs in 5 beside other work)."""
    readings = iter(range(100))
    clock = SimpleNamespace(monotonic=lambda: next(readings) * 0.02)
    monkeypatch.setattr(preflight, "time", clock)
    monkeypatch.setattr(preflight, "MISSING_CONFIRM_S", 0.05)
    client = brokers(_Client({1: [{"t": UNKNOWN}]}))
    assert asyncio.run(preflight.topics_missing_at({}, ["t"], 1.0, "source")) == ["t (not found)"]
    assert client.asked == 3 and client.closed  # at 0, again at 0.02 and 0.04, over at 0.06
