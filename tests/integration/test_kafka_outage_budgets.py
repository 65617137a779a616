"""Adversary: SIGTERM during a broker outage with the smallest budgets the config takes
(`runtime.shutdown_timeout_s` 0 and 0.1). Every shutdown step gets at least `MIN_STEP_S`,
and two of them (the final commit, the client's close) wait out all they get in an
outage, so the shutdown takes at least 2 x MIN_STEP_S whatever the budget: the backstop
must not end the worker before `shutdown_complete` for that. The fault is SIGKILL of the
test's own one-node broker (scripts/kafka_broker.py), as in test_kafka_outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    LONG,
    WorkerProcess,
    a_second_run_finishes,
    create_topic,
    eventually,
    produce_keyed,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 2


@pytest.mark.parametrize("budget_s", [0, pytest.param(0.1, marks=LONG)])
def test_sigterm_in_an_outage_with_a_tiny_budget_completes_its_shutdown_and_loses_nothing(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path, budget_s: float
):
    bootstrap, topic, group = broker.bootstrap, unique("tiny"), unique("g")

    async def setup() -> None:
        await create_topic(bootstrap, topic, PARTITIONS)
        await produce_keyed(bootstrap, topic, 400)

    asyncio.run(setup())
    config = write_config(
        tmp_path / "w.toml", bootstrap, topic, group,
        runtime={"shutdown_timeout_s": budget_s, "log_format": "text"},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, extra_env={"RECORD_SLEEP_S": "1"})
    try:
        eventually(lambda: sum(map(len, read_handled(tmp_path, worker.pid).values())) >= 100,
                   what="first batches handled")  # fmt: skip
        (node,) = broker.running()
        broker.stop_node(node.node_id, kafka_broker.signal.SIGKILL)
        worker.wait_for_log("event=commit_failed", timeout_s=30)
        started = time.monotonic()
        worker.terminate()
        code = worker.wait(timeout_s=20)
        took = time.monotonic() - started
        log = worker.log()
    finally:
        worker.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert "event=shutdown_deadline_exceeded" not in log, log[-3000:]
    assert "event=shutdown_complete" in log, log[-3000:]
    assert took < 5, f"took {took:.1f}s"

    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(bootstrap))
    a_second_run_finishes(config, tmp_path, bootstrap, group, topic, worker, PARTITIONS)
