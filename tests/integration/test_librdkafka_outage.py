"""The librdkafka source in a broker outage: the poller thread runs every consumer call,
so a commit that waits for a coordinator holds it, and nothing else may wait for that.

The broker is a dedicated single-node KRaft cluster, SIGKILLed (the fault is the real
broker's absence); the source is driven directly, as in test_librdkafka_faults.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from scripts import kafka_broker
from tests.integration.kafka_helpers import create_topic, unique
from tests.integration.test_librdkafka_faults import Listener, fetch_until, produce, source_config

pytest.importorskip("confluent_kafka")
pytestmark = pytest.mark.kafka

from worker.sources.kafka.librdkafka_source import LibrdkafkaSource  # noqa: E402


def test_a_fetch_returns_while_a_commit_waits_for_the_coordinator(
    broker: kafka_broker.Cluster,
):
    """With the broker gone a synchronous commit waits for a coordinator (librdkafka: up
    to `session.timeout.ms`, here 6 s) on the poller thread. A fetch queued behind it
    waited as long, so the main loop, which sees a SIGTERM only between fetches, did not
    start the shutdown before the backstop ended the worker (seen: SIGTERM in an outage,
    no `shutdown_started`, `shutdown_deadline_exceeded`). The fetch now returns nothing
    and leaves its poll pending; the commit still fails (never a false success)."""

    async def run() -> None:
        bootstrap, topic, group = broker.bootstrap, unique("rdout"), unique("g")
        await create_topic(bootstrap, topic, 1)
        await produce(bootstrap, topic, 5)
        tp = TopicPartition(topic, 0)
        listener = Listener()
        source = LibrdkafkaSource(source_config(bootstrap, topic, group))
        await source.start(listener)
        try:
            await fetch_until(source, lambda got: len(got) >= 5)
            (node,) = broker.running()
            broker.stop_node(node.node_id, kafka_broker.signal.SIGKILL)
            committing = asyncio.ensure_future(source.commit({tp: 4}))
            await asyncio.sleep(0)  # one loop step: the commit is queued, ahead of the fetch
            assert await source.fetch(0.2) == {}
            assert not committing.done(), "the fetch waited for the commit"
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(committing, 30)
            assert await fetch_until(source, lambda _: False, timeout_s=1) == []
        finally:
            await asyncio.wait_for(source.stop(), 30)
            for task in listener.tasks:
                task.cancel()

    asyncio.run(run())
