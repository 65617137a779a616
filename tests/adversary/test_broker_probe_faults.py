"""The broker probe against a real broker that is stopped, frozen or replaced.

Faults at the boundary only: SIGSTOP/SIGCONT of the broker's JVM, and the broker
replaced by a freshly formatted one on the same port with another node id (a
rebuilt single-node cluster, or a replaced host that keeps its address).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import kafka_broker
from tests.integration.kafka_helpers import long_run, wait_for_group_coordinator
from worker.sources.kafka.reach import BrokerProbe, Reachability

pytestmark = pytest.mark.kafka


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[kafka_broker.Cluster]:
    cluster = kafka_broker.start_cluster(tmp_path / "kafka", nodes=1)
    try:
        asyncio.run(wait_for_group_coordinator(cluster.bootstrap))
        yield cluster
    finally:
        cluster.stop()


class Seen:
    def __init__(self) -> None:
        self.gauge: list[int] = []
        self.changed = asyncio.Event()

    def __call__(self, away: int) -> None:
        self.gauge.append(away)
        self.changed.set()

    async def until(self, value: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.gauge or self.gauge[-1] != value:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"gauge never reached {value}: {self.gauge}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def test_a_frozen_broker_is_named_away_then_back_and_shutdown_stays_quick(
    broker: kafka_broker.Cluster,
):
    (node,) = broker.running()

    async def scenario() -> tuple[list[int], float]:
        seen = Seen()
        probe = BrokerProbe(
            {"bootstrap_servers": broker.bootstrap}, Reachability(on_change=seen), 0.2
        )
        task = asyncio.create_task(probe.run())
        try:
            await asyncio.sleep(1.5)
            assert not task.done()
            os.kill(node.pid, signal.SIGSTOP)
            await seen.until(1, 15)
            os.kill(node.pid, signal.SIGCONT)
            await seen.until(0, 30)
            os.kill(node.pid, signal.SIGSTOP)
            await seen.until(1, 15)
            assert not task.done()
            started = time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            took = time.monotonic() - started
        finally:
            os.kill(node.pid, signal.SIGCONT)
        return seen.gauge, took

    gauge, took = asyncio.run(scenario())
    assert gauge == [1, 0, 1]
    assert took < 2.0, f"the probe took {took:.1f}s to stop with the broker frozen"


def _replace_with_new_node_id(cluster: kafka_broker.Cluster, new_id: int) -> subprocess.Popen:
    """Stop the only node; start a freshly formatted broker with `new_id` on its ports."""
    (old,) = cluster.running()
    cluster.stop_node(old.node_id, signal.SIGTERM)
    workdir = cluster.workdir / f"renumbered-{new_id}"
    node = kafka_broker.ClusterNode(new_id, old.port, old.controller_port, workdir)
    (workdir / "logs").mkdir(parents=True)
    node.properties.write_text(
        kafka_broker._cluster_properties(new_id, [node], workdir / "data", {})
    )
    kafka_broker._write_log4j(workdir)
    lib = kafka_broker.fetch_jars()
    fmt = ["kafka.tools.StorageTool", "format", "-t", kafka_broker._cluster_id()]
    small = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    command = [*kafka_broker._java(lib, workdir, small), *fmt, "-c", str(node.properties)]
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    with (workdir / "logs" / "stdout").open("ab") as out:
        proc = subprocess.Popen(
            [*kafka_broker._java(lib, workdir, kafka_broker.CLUSTER_JVM), "kafka.Kafka",
             str(node.properties)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            if new_id in kafka_broker.fetch_metadata(node.port).brokers:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("renumbered broker did not start")
        time.sleep(0.5)
    return proc


@long_run
def test_a_broker_replaced_on_the_same_address_with_a_new_node_id_is_not_away_for_ever(
    broker: kafka_broker.Cluster,
):
    """One broker at one address, answering all along after its replacement: the probe
    must not name the old node id away for ever (the gauge would alert for ever).
    Held, though only because the old id's open connection (same address) keeps
    answering: an id that leaves the metadata for good (a decommissioned broker) stays
    in `_known`, and so away, for the life of the process."""

    async def scenario() -> tuple[list[int], list[str], bool]:
        seen = Seen()
        reach = Reachability(on_change=seen)
        probe = BrokerProbe({"bootstrap_servers": broker.bootstrap}, reach, 0.2)
        task = asyncio.create_task(probe.run())
        proc = None
        try:
            await asyncio.sleep(1.5)
            proc = await asyncio.to_thread(_replace_with_new_node_id, broker, 7)
            await asyncio.to_thread(asyncio.run, wait_for_group_coordinator(broker.bootstrap))
            await asyncio.sleep(10)  # many probe rounds with the new broker answering
            crashed = task.done()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
        return seen.gauge, reach.away(), crashed

    gauge, away, crashed = asyncio.run(scenario())
    assert not crashed
    assert away == [], f"still named away: {away} (gauge history {gauge})"
    assert gauge[-1:] in ([], [0]), gauge
