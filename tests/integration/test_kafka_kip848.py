"""The KIP-848 consumer group protocol (`source.group_protocol = "consumer"`) on a real
Kafka 4.x broker (`scripts/kafka_broker.py start --version 4.1.1`), with librdkafka.

Two workers split the partitions, one stops, nothing is lost; and the rebalances are
incremental: when the second worker joins, the first gives up only the partitions that
move (with the classic protocol's eager rebalance it would revoke all of them first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    end_offsets,
    eventually,
    keyed_topic,
    produce_keyed,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)
from tests.integration.test_kafka_fresh_group_start import (
    killed_inside_its_first_batches_loses_none,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 4
KIP848 = {"client": "librdkafka", "group_protocol": "consumer", "session_timeout_ms": None,
          "heartbeat_interval_ms": None}  # fmt: skip


@pytest.fixture(scope="module")
def kafka4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A killed member's partitions move after its session (the broker's, KIP-848): 8 s
    # here, not Kafka's 45 s.
    sessions = {"group.consumer.min.session.timeout.ms": "6000",
                "group.consumer.session.timeout.ms": "8000",
                "group.consumer.min.heartbeat.interval.ms": "1000",
                "group.consumer.heartbeat.interval.ms": "1000"}  # fmt: skip
    broker = kafka_broker.start(
        tmp_path_factory.mktemp("kafka4"), extra=sessions, version=kafka_broker.KAFKA4_VERSION
    )
    try:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield broker.bootstrap
    finally:
        broker.stop()


def partitions_in(worker: WorkerProcess, event: str, nth: int) -> list[str]:
    line = worker.wait_for_log(rf"event={event} partitions=(\S*)", count=nth).group(1)
    return [p for p in line.split(",") if p]


def test_two_workers_split_the_partitions_incrementally_and_one_stopping_loses_nothing(
    kafka4: str, tmp_path: Path
):
    topic, _ = keyed_topic(kafka4, 4000, PARTITIONS)
    group = unique("g848")
    config = write_config(
        tmp_path / "w.toml", kafka4, topic, group,
        source={"client": "librdkafka", "group_protocol": "consumer",
                "session_timeout_ms": None, "heartbeat_interval_ms": None},
    )  # fmt: skip
    a = WorkerProcess(config, tmp_path)
    b = None
    try:
        assert len(partitions_in(a, "assigned", 1)) == PARTITIONS
        b = WorkerProcess(config, tmp_path)
        taken = partitions_in(b, "assigned", 1)
        given = partitions_in(a, "revoked", 1)
        # Incremental: the first worker gives up exactly what the second takes, and keeps
        # the rest without a revoke (an eager rebalance revokes all four first).
        assert 0 < len(given) < PARTITIONS and sorted(given) == sorted(taken)
        asyncio.run(produce_keyed(kafka4, topic, 4000))
        ends = asyncio.run(end_offsets(kafka4, topic, PARTITIONS))
        eventually(lambda: committed(kafka4, group, topic) == ends, what="split run committed")
        assert set(read_handled(tmp_path, b.pid)) == {int(p.rsplit("-", 1)[1]) for p in taken}

        b.terminate()
        assert b.wait() == 0
        assert sorted(partitions_in(a, "assigned", 2)) == sorted(taken)  # only what moved
        asyncio.run(produce_keyed(kafka4, topic, 4000))
        ends = asyncio.run(end_offsets(kafka4, topic, PARTITIONS))
        eventually(lambda: committed(kafka4, group, topic) == ends, what="moved run committed")
        assert "event=revoked" not in a.log().split("event=assigned", 3)[-1]
    finally:
        a.stop()
        if b is not None:
            b.stop()
    handled = read_handled(tmp_path)
    for p, end in ends.items():
        assert set(handled[p]) == set(range(end)), f"partition {p} lost records"


def test_latest_a_worker_killed_inside_its_first_batches_loses_none_on_the_consumer_protocol(
    kafka4: str, tmp_path: Path
):
    """The start commit (`start_commit`) on KIP-848: librdkafka commits a new partition's
    start inside the assign callback, before the partitions are assigned to the client
    (the group has no checkpoint of them; the member epoch is the new one's)."""
    killed_inside_its_first_batches_loses_none(kafka4, tmp_path, KIP848)
