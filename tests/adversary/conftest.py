"""The adversary tests share the integration suite's real broker fixture."""

from tests.integration.conftest import kafka, kafka_client  # noqa: F401
