"""Broker outages: the worker stops within its budget and says why; nothing is lost.

The broker is a dedicated single-node KRaft cluster (so it can be killed and restarted
with its data) started by the repo's script; the fault is SIGKILL of its process.
"""

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
SHUTDOWN_S = 5


#: (client, shutdown budget): the usual budget on both clients; the smallest the config
#: takes (0, 0.1) on librdkafka, where the backstop ended the worker of a spent budget
#: before `shutdown_complete`, and on aiokafka with STREAMWORKER_LONG=1.
BUDGETS = [
    ("aiokafka", SHUTDOWN_S), pytest.param("librdkafka", SHUTDOWN_S, marks=LONG),
    ("librdkafka", 0),
    pytest.param("aiokafka", 0, marks=LONG), pytest.param("librdkafka", 0.1, marks=LONG),
    pytest.param("aiokafka", 0.1, marks=LONG),
]  # fmt: skip


@pytest.mark.parametrize(("kafka_client", "budget_s"), BUDGETS, indirect=["kafka_client"])
def test_sigterm_during_an_outage_exits_0_within_the_budget_and_a_restart_loses_nothing(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path, budget_s: float
):
    """The first version waited for the coordinator in the final commit and the client's
    close: SIGTERM during an outage ended the worker after a minute or never, and
    aiokafka's CancelledError could end it with a traceback and exit 1. On librdkafka
    the close began after the budget: the drain and final commit now leave it time.
    With the smallest budgets every step still gets `MIN_STEP_S`, and two of them (the
    final commit, the client's close) wait out all they get in an outage: the backstop
    must leave them that (`backstop_after_s`)."""
    bootstrap, topic, group = broker.bootstrap, unique("outage"), unique("g")

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
        # Mid-run: the first batches are handled, later ones still in the handler.
        eventually(lambda: sum(map(len, read_handled(tmp_path, worker.pid).values())) >= 100,
                   what="first batches handled")  # fmt: skip
        (node,) = broker.running()
        broker.stop_node(node.node_id, kafka_broker.signal.SIGKILL)
        worker.wait_for_log("event=commit_failed", timeout_s=30)  # once, for the outage
        started = time.monotonic()
        worker.terminate()
        code = worker.wait(timeout_s=SHUTDOWN_S + 20)
        took = time.monotonic() - started
        log = worker.log()
    finally:
        worker.stop()
    assert code == 0, log[-3000:]
    assert took <= max(budget_s + 2, 5), f"took {took:.1f}s"
    assert "Traceback" not in log
    assert "event=shutdown_complete" in log, log[-3000:]
    assert "event=shutdown_deadline_exceeded" not in log, log[-3000:]  # the close had its time
    if budget_s == SHUTDOWN_S:
        # The final commit failed, naming what the next owner redoes; or the partitions
        # were lost first (librdkafka: its session ends at the 6 s its first commit
        # waits), and nothing was committed for them.
        assert "event=final_commit_failed" in log or "event=lost " in log
        assert log.count("event=commit_failed") == 1

    # Broker back, a new worker: everything handled at least once, nothing lost.
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(bootstrap))
    asyncio.run(produce_keyed(bootstrap, topic, 100))
    a_second_run_finishes(config, tmp_path, bootstrap, group, topic, worker, PARTITIONS)


@pytest.mark.parametrize(
    "kafka_client", [pytest.param("aiokafka", marks=LONG), "librdkafka"], indirect=True
)
def test_an_outage_is_logged_once_counted_and_its_end_logged_with_its_duration(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """The first version logged nothing of its own through a 12 s outage and counted no
    failed commit (the client retries internally): all evidence was the client's flood
    (152 to 267 ERROR lines for a 20 s outage)."""
    bootstrap, topic, group = broker.bootstrap, unique("outage"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group)
    started = tmp_path / "started"
    worker = WorkerProcess(
        config, tmp_path, extra_env={"RECORD_SLEEP_S": "2", "RECORD_STARTED": str(started)}
    )
    try:  # fmt: skip
        worker.wait_for_log("event=assigned", timeout_s=60)
        asyncio.run(produce_keyed(bootstrap, topic, 50))
        eventually(started.exists, what="a batch inside the handler")
        (node,) = broker.running()
        broker.stop_node(node.node_id, kafka_broker.signal.SIGKILL)
        killed = time.monotonic()
        # Handled while the broker is away: its commit cannot be acknowledged.
        worker.wait_for_log("event=commit_failed", timeout_s=30)
        time.sleep(max(12 - (time.monotonic() - killed), 0))  # the outage lasts 12 s
        broker.start_node(node.node_id)
        match = worker.wait_for_log(r"event=commits_recovered after_s=([\d.]+)", timeout_s=90)
        assert float(match.group(1)) > 0
        back = worker.wait_for_log(r"event=brokers_reachable \S+ after_s=([\d.]+)", timeout_s=30)
        log = worker.log()
        assert log.count("event=commit_failed") == 1
        # The worker's own view of the outage, apart from commits: once when the broker
        # went, once when it was back, with how long (probed every 2 s).
        assert log.count("event=brokers_unreachable") == 1, log[-3000:]
        assert 12 - 2 - 1 <= float(back.group(1)) <= 12 + 2 + 30
        # The client's flood is folded: the first line of each kind, then a count.
        client_lines = [line for line in log.splitlines()
                        if "logger=aiokafka" in line or "logger=librdkafka" in line]  # fmt: skip
        assert len(client_lines) <= 20, "\n".join(client_lines)
        failures = [
            line for line in worker.metrics_text().splitlines()
            if line.startswith('worker_commit_failures_total{source="kafka"}')
        ]  # fmt: skip
        assert failures and float(failures[0].split()[-1]) >= 1
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def test_the_watchdog_exit_takes_under_2s_while_the_coordinator_is_unreachable(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """The first version only set a flag when the watchdog tripped, then waited in the
    shutdown for a coordinator that was gone: exit came a minute later."""
    bootstrap, topic, group = broker.bootstrap, unique("stall"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    config = write_config(
        tmp_path / "w.toml", bootstrap, topic, group,
        handler={"target": "recording_handler:handle", "timeout_s": 3600},
        runtime={"stall_timeout_s": 4, "log_format": "text"},
    )  # fmt: skip
    started = tmp_path / "started"
    worker = WorkerProcess(
        config, tmp_path, extra_env={"RECORD_SLEEP_S": "3600", "RECORD_STARTED": str(started)}
    )
    try:  # fmt: skip
        worker.wait_for_log("event=assigned", timeout_s=60)
        asyncio.run(produce_keyed(bootstrap, topic, 20))
        eventually(started.exists, what="a batch inside the handler")
        (node,) = broker.running()
        broker.stop_node(node.node_id, kafka_broker.signal.SIGKILL)
        worker.wait_for_log("event=commits_stalled", timeout_s=60)
        tripped = time.monotonic()
        code = worker.wait(timeout_s=30)
        took = time.monotonic() - tripped
    finally:
        worker.stop()
    assert code == 3
    assert took < 2.0 + 0.5, f"exit {took:.1f}s after the trip"  # 0.5 s: log polling
