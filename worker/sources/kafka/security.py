"""The connection settings every Kafka client of the worker shares (source, DLQ, lag, redrive).

Also turns aiokafka's "Unable to bootstrap" into the real reason when the
broker refused the credentials: aiokafka raises only a connection error and
writes the SASL failure to its log, so the start-up watches that log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.sources.kafka.config import KafkaSourceConfig


def client_kwargs(config: KafkaSourceConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol.startswith("SASL"):
        assert config.sasl_plain_password is not None  # the config validator made sure
        kwargs.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_plain_username,
            sasl_plain_password=config.sasl_plain_password.get_secret_value(),
        )
    if config.security_protocol.endswith("SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=config.ssl_cafile, certfile=config.ssl_certfile, keyfile=config.ssl_keyfile
        )
    return kwargs


class _Watch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.auth_failed = False

    def emit(self, record: logging.LogRecord) -> None:
        self.auth_failed = self.auth_failed or refused_auth(record.getMessage())


def refused_auth(text: str) -> bool:
    """An aiokafka line saying the broker refused the credentials."""
    return "SaslAuthenticationFailed" in text or "Authentication failed" in text


@contextmanager
def watch_for_auth_failure() -> Iterator[_Watch]:
    """While connecting, notice aiokafka logging that the broker refused our credentials."""
    watch = _Watch()
    logger = logging.getLogger("aiokafka")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


def auth_failure_message(config: KafkaSourceConfig) -> str:
    return (
        f"kafka: authentication failed for user {config.sasl_plain_username!r} with "
        f"{config.sasl_mechanism} at {','.join(config.bootstrap_servers)}: check "
        "source.sasl_plain_username and source.sasl_plain_password"
    )
