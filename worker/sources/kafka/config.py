"""`[source]` with `kind = "kafka"`: the consumer group, fetch tuning and security settings."""

from __future__ import annotations

import os
import string
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator

from worker.config_base import SourceSettings

#: aiokafka writes fetch sizes as int32 on the wire.
INT32_MAX = 2**31 - 1
#: librdkafka's own bounds, narrower than aiokafka's: past them `Consumer()` refuses the
#: config at start, so they are config errors here (key: librdkafka property, its maximum).
LIBRDKAFKA_MAXIMA = {
    "fetch_max_bytes": ("fetch.max.bytes", 2_147_483_135),
    "max_partition_fetch_bytes": ("max.partition.fetch.bytes", 1_000_000_000),
    "fetch_min_bytes": ("fetch.min.bytes", 100_000_000),
}

#: Every secret setting and its `*_file` twin (a mounted Kubernetes secret): never
#: printed (`check-config` masks it) or logged.
SECRET_FILES = {
    "sasl_plain_password": "sasl_plain_password_file",
    "ssl_key_password": "ssl_key_password_file",
}


class KafkaSourceConfig(SourceSettings):
    kind: Literal["kafka"] = "kafka"
    #: The client library: aiokafka (asyncio, pure Python) or librdkafka (confluent-kafka,
    #: `streamworker[librdkafka]`: about twice the throughput, KIP-848 groups). See
    #: sources/kafka/clients.py.
    client: Literal["aiokafka", "librdkafka"] = "aiokafka"
    #: The consumer group protocol: "classic" (JoinGroup/SyncGroup, eager rebalances), or
    #: "consumer" (KIP-848: the broker assigns, rebalances are incremental; librdkafka and
    #: a Kafka 4.0+ broker only).
    group_protocol: Literal["classic", "consumer"] = "classic"
    #: Static membership (KIP-345): a member that restarts with the same id within the
    #: session timeout gets its partitions back without a rebalance. `${HOSTNAME}` (any
    #: `${VAR}`) is expanded from the environment: in a StatefulSet the pod name is stable.
    group_instance_id: str | None = None
    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"], min_length=1)
    topics: list[str] = Field(default_factory=list)
    client_id: str = "streamworker"
    #: How long the start waits for a broker to answer (retrying with backoff) before it
    #: gives up: a container started beside its broker must not crash-loop. 0: one try (5 s).
    connect_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60
    session_timeout_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100, le=60_000)] = 3_000
    max_poll_interval_ms: Annotated[int, Field(ge=1000, le=86_400_000)] = 300_000
    #: How long the group coordinator waits for members to rejoin in a rebalance: the
    #: time a member has to drain and commit its revoked partitions. Must cover
    #: `runtime.rebalance_timeout_s` (else the broker gives partitions away while they
    #: still drain); at most `max_poll_interval_ms`.
    rebalance_timeout_ms: Annotated[int, Field(ge=1000, le=86_400_000)] = 30_000
    fetch_max_records: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    fetch_max_bytes: Annotated[int, Field(ge=1024, le=INT32_MAX)] = 52_428_800
    max_partition_fetch_bytes: Annotated[int, Field(ge=1024, le=INT32_MAX)] = 2_097_152
    fetch_min_bytes: Annotated[int, Field(ge=1, le=INT32_MAX)] = 1
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 500
    check_crcs: bool = True
    #: Which records of transactional producers are delivered: "read_committed" (the
    #: default) never hands a handler a record of an aborted or still open transaction
    #: (the read stops at the last stable offset until it ends); "read_uncommitted" hands
    #: over everything written, aborted records too (aiokafka's own default, not ours:
    #: an aborted write is one the producer took back).
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    #: From the file, the environment (WORKER__SOURCE__SASL_PLAIN_PASSWORD) or
    #: `sasl_plain_password_file`; never printed or logged.
    sasl_plain_password: SecretStr | None = None
    sasl_plain_password_file: str | None = None
    #: OAUTHBEARER: "module:callable" returning (token, expires_at epoch s), or
    #: "aws_msk_iam" (Amazon MSK IAM, `streamworker[msk]`); see sources/kafka/oauth.py.
    sasl_oauth_token_provider: str | None = None
    #: The region `aws_msk_iam` signs for; default: the standard AWS chain's.
    sasl_aws_region: str | None = None
    #: PEM files: the CA bundle the broker's certificate must chain to (default: the
    #: system's), and a client certificate and its key for brokers that require one (mTLS).
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: The pass phrase of an encrypted `ssl_keyfile`; or `ssl_key_password_file`.
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: str | None = None
    #: The broker's certificate must be for the host connected to. Off only for a test setup.
    ssl_check_hostname: bool = True

    @property
    def commits_in_transactions(self) -> bool:
        """Whether the client can commit offsets inside a producer's transaction
        (`outputs.exactly_once`): aiokafka's source can; the librdkafka one not yet."""
        return self.client == "aiokafka"

    @property
    def loop_delay_budget_s(self) -> float:
        """A loop blocked for a heartbeat interval risks the group session."""
        return self.heartbeat_interval_ms / 1000.0

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = []
        for secret, file_key in SECRET_FILES.items():
            path = data.get(file_key)
            if not path:
                continue
            try:
                with open(path) as fh:
                    value = fh.read().strip()
            except OSError as exc:
                problems.append(f"source.{file_key} = {path!r}: cannot read it: {exc.strerror}")
                continue
            if not value:  # else the broker refuses an empty secret, far from its cause
                problems.append(f"source.{file_key} = {path!r}: the file is empty")
                continue
            data = {**data, secret: value}
        if problems:
            raise ValueError("; ".join(problems))
        return data

    @model_validator(mode="after")
    def _tls_files_usable(self) -> KafkaSourceConfig:
        """The PEM files load (and the key's pass phrase opens it) now, not at the first
        connection: a wrong path is a config error, one line, exit 2."""
        if not self.security_protocol.endswith("SSL"):
            return self
        from worker.sources.kafka.tls_context import TlsFilesError, ssl_context

        try:
            ssl_context(self)
        except TlsFilesError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSourceConfig:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism == "OAUTHBEARER":
            if not self.sasl_oauth_token_provider:
                raise ValueError(
                    "source.sasl_mechanism = 'OAUTHBEARER' needs source.sasl_oauth_token_provider"
                )
            from worker.sources.kafka.oauth import TokenProviderError, load_hook

            try:  # a provider that cannot be loaded is a config error, now
                load_hook(self.sasl_oauth_token_provider, self.sasl_aws_region)
            except TokenProviderError as exc:
                raise ValueError(str(exc)) from None
        elif self.security_protocol.startswith("SASL"):
            missing = [
                k
                for k in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
                if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(
                    f"source.security_protocol = {self.security_protocol!r} needs "
                    + ", ".join(f"source.{k}" for k in missing)
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _expand_instance_id(cls, data: Any) -> Any:
        """`${HOSTNAME}` in `group_instance_id` from the environment, now: a variable that is
        not set is a config error, not a literal id that every replica would share."""
        if not isinstance(data, dict) or not isinstance(data.get("group_instance_id"), str):
            return data
        raw = data["group_instance_id"]
        try:
            expanded = string.Template(raw).substitute(os.environ)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"source.group_instance_id = {raw!r}: cannot expand it ({type(exc).__name__}: "
                f"{exc} is not set in the environment, or the $ is not ${{VAR}})"
            ) from None
        if not expanded.strip():
            raise ValueError(f"source.group_instance_id = {raw!r}: expands to an empty id")
        return {**data, "group_instance_id": expanded}

    @model_validator(mode="after")
    def _client_can_do_it(self) -> KafkaSourceConfig:
        """Combinations the chosen client cannot work with: every one found, one line each
        (`describe_errors` splits the lines)."""
        problems = []
        if self.group_protocol == "consumer" and self.client != "librdkafka":
            problems.append(
                "source.group_protocol = 'consumer' needs source.client = 'librdkafka' "
                "(aiokafka speaks only the classic protocol)"
            )
        if self.group_protocol == "consumer":
            problems += [
                f"source.{key} with source.group_protocol = 'consumer': the broker sets "
                f"it (group.consumer.{key.removesuffix('_ms').replace('_', '.')}.ms); remove it"
                for key in ("session_timeout_ms", "heartbeat_interval_ms")
                if key in self.model_fields_set
            ]
        if self.client == "librdkafka":
            problems += self._librdkafka_refuses()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _librdkafka_refuses(self) -> list[str]:
        problems = [
            f"source.{key} = {getattr(self, key)}: at most {limit} with source.client = "
            f"'librdkafka' ({prop})"
            for key, (prop, limit) in LIBRDKAFKA_MAXIMA.items()
            if getattr(self, key) > limit
        ]
        if self.group_protocol == "classic" and self.max_poll_interval_ms < self.session_timeout_ms:
            problems.append(
                f"source.max_poll_interval_ms = {self.max_poll_interval_ms}: at least "
                f"source.session_timeout_ms ({self.session_timeout_ms}) with source.client = "
                "'librdkafka'"
            )
        return problems

    @model_validator(mode="after")
    def _needs_topics(self) -> KafkaSourceConfig:
        if not self.topics:
            raise ValueError("source.topics: a kafka source needs at least one topic")
        return self
