"""The adversary tests share the integration suite's real broker fixtures."""

from tests.integration.conftest import kafka, kafka_client  # noqa: F401
from tests.integration.test_kafka_kip848 import kafka4  # noqa: F401
