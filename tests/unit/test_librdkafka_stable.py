"""librdkafka's last stable offsets from its statistics (`librdkafka_stable`); on the real
broker: tests/integration/test_kafka_watchdog.py, an open transaction."""

from __future__ import annotations

import orjson
from aiokafka import TopicPartition

from worker.sources.kafka.librdkafka_stable import FRESH_S, StableOffsets

TP = TopicPartition("t", 0)


def stats(ls_offset: int) -> str:
    partitions = {"0": {"hi_offset": 9, "ls_offset": ls_offset}, "-1": {"ls_offset": -1001}}
    return orjson.dumps({"topics": {"t": {"partitions": partitions}}}).decode()


def test_an_open_transaction_ends_what_is_readable_at_the_last_stable_offset():
    now = [100.0]
    stable = StableOffsets(lambda: now[0])
    assert stable.readable_end(TP, 9) == 9, "nothing known yet: the high watermark"
    stable.on_stats(stats(5))
    assert stable.readable_end(TP, 9) == 5
    assert stable.readable_end(TopicPartition("t", 1), 9) == 9
    now[0] += FRESH_S
    assert stable.readable_end(TP, 9) == 9, "stale: a poller that stopped is not hidden"


def test_statistics_it_cannot_read_leave_the_last_ones():
    stable = StableOffsets(lambda: 0.0)
    stable.on_stats(stats(5))
    for junk in ("not json", "[]", '{"topics": {"t": {"partitions": {"x": {}}}}}'):
        stable.on_stats(junk)
    assert stable.readable_end(TP, 9) == 5


def test_only_read_committed_asks_for_statistics():
    stable = StableOffsets()
    assert stable.conf("read_uncommitted") == {}
    assert stable.conf("read_committed")["stats_cb"] == stable.on_stats
