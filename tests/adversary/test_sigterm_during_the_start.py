"""SIGTERM while the worker is still starting, on a real broker: exit 0 at once, nothing kept.

The start's longest wait after the broker answers is the group join: the coordinator
holds a JoinGroup until every member has rejoined, and a new group's first join
`group.initial.rebalance.delay.ms` longer (3 s with Kafka's defaults; here 30 s, so
the worker is surely inside it when the signal comes). The fault is the broker's own
setting; the worker is a child process, as an orchestrator runs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    WorkerProcess,
    create_topic,
    eventually,
    unique,
    wait_for_group_coordinator,
    write_config,
)

pytestmark = pytest.mark.kafka

#: What the brief of the start promises after SIGTERM.
EXIT_WITHIN_S = 1.0


@pytest.fixture
def slow_join_broker(tmp_path: Path) -> Iterator[str]:
    broker = kafka_broker.start(
        tmp_path / "kafka", extra={"group.initial.rebalance.delay.ms": "30000"}
    )
    try:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield broker.bootstrap
    finally:
        broker.stop()


def group_state(bootstrap: str, group: str) -> str:
    async def ask() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
            _, _, state, *_ = response.groups[0]
            return state
        finally:
            await admin.close()

    return asyncio.run(ask())


def test_sigterm_during_the_group_join_exits_0_within_a_second(slow_join_broker, tmp_path):
    topic, group = unique("telemetry"), unique("g")
    asyncio.run(create_topic(slow_join_broker, topic, 2))
    config = write_config(tmp_path / "w.toml", slow_join_broker, topic, group)
    records = tmp_path / "records"
    records.mkdir()
    proc = WorkerProcess(config, records)
    try:
        eventually(lambda: group_state(slow_join_broker, group) == "PreparingRebalance",
                   30, "the worker to be waiting in its group join")  # fmt: skip
        sent = time.monotonic()
        proc.terminate()
        code = proc.wait(60)
        took = time.monotonic() - sent
    finally:
        proc.stop()
    log = proc.log()
    assert code == 0, log[-3000:]
    assert took < EXIT_WITHIN_S, f"exited {took:.2f} s after SIGTERM:\n{log[-3000:]}"
    assert "Traceback" not in log and "level=ERROR" not in log, log[-3000:]
    assert "event=assigned" not in log  # the join was given up, not waited out
    assert "event=shutdown_complete exit_code=0" in log
