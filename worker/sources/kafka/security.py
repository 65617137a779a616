"""The connection settings every Kafka client of the worker shares (source, DLQ, lag, redrive).

Also turns aiokafka's "Unable to bootstrap" into the real reason when the
broker refused the credentials: aiokafka raises only a connection error and
writes the SASL failure to its log, so the start-up watches that log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.oauth import RefreshingTokenProvider, load_hook
from worker.sources.kafka.tls_context import ssl_context


def client_kwargs(config: KafkaSourceConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol.startswith("SASL") and config.sasl_mechanism == "OAUTHBEARER":
        spec = config.sasl_oauth_token_provider
        assert spec is not None  # the config validator made sure
        hook = load_hook(spec, config.sasl_aws_region)
        kwargs.update(
            sasl_mechanism="OAUTHBEARER",
            sasl_oauth_token_provider=RefreshingTokenProvider(hook, spec),
        )
    elif config.security_protocol.startswith("SASL"):
        assert config.sasl_plain_password is not None  # the config validator made sure
        kwargs.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_plain_username,
            sasl_plain_password=config.sasl_plain_password.get_secret_value(),
        )
    if config.security_protocol.endswith("SSL"):
        kwargs["ssl_context"] = ssl_context(config)
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


def auth_failure_message(connection: Mapping[str, Any]) -> str:
    """The line for refused credentials, from the client settings (`client_kwargs`)."""
    servers = connection.get("bootstrap_servers", ())
    servers = servers if isinstance(servers, str) else ",".join(map(str, servers))
    provider = connection.get("sasl_oauth_token_provider")
    if provider is not None:
        return (
            f"the broker at {servers} refused the OAUTHBEARER token of "
            f"source.sasl_oauth_token_provider = {getattr(provider, 'name', '?')!r}"
        )
    return (
        f"authentication failed for user {connection.get('sasl_plain_username')!r} with "
        f"{connection.get('sasl_mechanism')} at {servers}: check "
        "source.sasl_plain_username and source.sasl_plain_password"
    )
