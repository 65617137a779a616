"""Adversary: the OAUTHBEARER broker SIGKILLed mid-run for longer than a token lives, then
restarted (same ports, same data): the clients' tokens expire meanwhile and are
refreshed while no broker answers (librdkafka's oauth_cb at 80% of each 3 s token). The
worker reconnects with a token that is good, handles every record, commits to the end,
and stops on SIGTERM with exit 0. The fault is the test's own broker's SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import kafka_broker, tls_certs
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed_offsets,
    create_topic,
    end_offsets,
    eventually,
    handled_by,
    long_run,
    produce_keyed,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)
from tests.integration.oauth_tokens import LIFETIME_S

pytestmark = pytest.mark.kafka
PARTITIONS = 2


@pytest.fixture
def oauth_broker(tmp_path: Path) -> Iterator[dict[str, kafka_broker.Broker]]:
    """A broker with the OAUTHBEARER listener of the test's own, to kill and restart
    (the test puts the restarted one in its place, for the fixture to stop)."""
    certs = tls_certs.make(tmp_path / "certs")
    broker = kafka_broker.start(tmp_path / "broker", tls=certs)
    holder = {"broker": broker}
    try:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield holder
    finally:
        holder["broker"].stop()


@long_run
def test_a_broker_restart_longer_than_a_token_lives_loses_nothing(
    oauth_broker: dict[str, kafka_broker.Broker], kafka_client: str, tmp_path: Path
):
    broker: kafka_broker.Broker = oauth_broker["broker"]
    bootstrap, topic, group = broker.bootstrap, unique("oauth-restart"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, PARTITIONS))
    asyncio.run(produce_keyed(bootstrap, topic, 100))
    hook = "tests.integration.oauth_tokens:short_lived"
    source = {"bootstrap_servers": [broker.address("OAUTH")], "security_protocol":
              "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER",
              "sasl_oauth_token_provider": hook}  # fmt: skip
    config = write_config(tmp_path / "w.toml", "unused", topic, group, source=source)
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: sum(map(len, read_handled(tmp_path, worker.pid).values())) >= 100,
                   what="first records handled")  # fmt: skip
        os.kill(broker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait_for_log("event=brokers_unreachable", timeout_s=30)
        time.sleep(max(3 * LIFETIME_S - (time.monotonic() - killed), 0))  # the outage's length
        broker = kafka_broker.restart(broker.workdir)
        broker.ports = oauth_broker["broker"].ports
        oauth_broker["broker"] = broker
        asyncio.run(wait_for_group_coordinator(bootstrap))
        asyncio.run(produce_keyed(bootstrap, topic, 100))
        ends = asyncio.run(end_offsets(bootstrap, topic, PARTITIONS))
        eventually(lambda: asyncio.run(committed_offsets(bootstrap, group, topic)) == ends,
                   timeout_s=120, what="committed to the end after the restart")  # fmt: skip
        worker.terminate()
        code = worker.wait(timeout_s=40)
        log = worker.log()
    finally:
        worker.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "event=shutdown_complete" in log
    assert handled_by(tmp_path, worker) == {p: set(range(end)) for p, end in ends.items()}
