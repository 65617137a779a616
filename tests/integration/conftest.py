import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts import kafka_broker  # noqa: E402
from tests.integration import kafka_helpers  # noqa: E402
from tests.integration.kafka_helpers import wait_for_group_coordinator  # noqa: E402


@pytest.fixture(params=kafka_helpers.KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test runs once per Kafka client (`source.client`): the configs `write_config`
    writes name it, and an in-process config takes the name this yields."""
    kafka_helpers.client["name"] = request.param  # or a test's own `on_clients` pairs
    try:
        yield request.param
    finally:
        kafka_helpers.client["name"] = "aiokafka"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Apache Kafka broker (KRaft) for the session; yields its bootstrap address."""
    broker = kafka_broker.start(tmp_path_factory.mktemp("kafka"))
    try:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[kafka_broker.Cluster]:
    """A one-node broker of the test's own, to stop and start (outage tests): the session's
    `kafka` must stay up for the other tests."""
    cluster = kafka_broker.start_cluster(tmp_path / "kafka", nodes=1)
    try:
        asyncio.run(wait_for_group_coordinator(cluster.bootstrap))
        yield cluster
    finally:
        cluster.stop()
