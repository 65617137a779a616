"""A three-node Kafka cluster shared by the fault tests of a module.

Starting three JVMs dominates the suite's time on a two-core machine, so one
cluster serves every test of the module. Each test leaves it as it found it
(every node running, every partition with a full ISR) and checks that first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scripts import kafka_broker


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_broker.Cluster]:
    cluster = kafka_broker.start_cluster(tmp_path_factory.mktemp("kafka-cluster"), nodes=3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kafka_cluster: kafka_broker.Cluster) -> kafka_broker.Cluster:
    """The module's cluster, whole again: every node up and every partition fully in sync."""
    for node in kafka_cluster.nodes:
        if node.pid is None:
            kafka_cluster.start_node(node.node_id)
    kafka_cluster.wait_ready()
    kafka_cluster.wait_in_sync()
    return kafka_cluster
