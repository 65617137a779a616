"""The source's settings as librdkafka configuration properties (confluent-kafka).

The same `[source]` keys as for aiokafka, mapped one by one; what librdkafka does
differently by default, and would change what the worker promises, is set here:

- `enable.auto.commit = false`, `enable.auto.offset.store = false`: nothing is committed
  but what the worker commits, the positions it handled (never what was fetched).
- `fetch.queue.backoff.ms`: librdkafka stops fetching a partition for this long once its
  pre-fetch queue is full (`queued.min.messages`/`queued.max.messages.kbytes`). The 1000 ms
  default means a consumer that drains its queue fast then waits up to a second with
  nothing to read: measured here (the raw `consume(1000)` loop of load/bench_raw_rdkafka.py,
  400,000 records, 8 partitions, two rounds) 144k and 147k records/s at 1000 ms against
  493k and 665k at 10 ms. 10 ms keeps the queue fed for one idle check per partition
  every 10 ms.
- `queued.max.messages.kbytes`: what librdkafka holds fetched ahead, for all partitions
  (one consumer queue): the source's prefetch, counted against the memory budget
  (`LibrdkafkaSource.fit_prefetch`).
"""

from __future__ import annotations

from typing import Any

from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.expiry import LIBRDKAFKA_RESET

#: See the module's docstring: librdkafka's 1000 ms default stalls a fast consumer.
FETCH_QUEUE_BACKOFF_MS = 10
#: librdkafka's default `message.max.bytes`.
MESSAGE_MAX_BYTES = 1_000_000
#: The pre-fetch queue (librdkafka: 64 MiB): 8 MiB keeps it, with the one fetch it may
#: overshoot by, inside the default memory budget's prefetch share (16 MiB).
QUEUE_MAX_KBYTES = 8_192


def queue_kbytes(config: KafkaSourceConfig) -> int:
    """The pre-fetch queue's size: within `fetch_max_bytes` (one full fetch ahead)."""
    return max(min(QUEUE_MAX_KBYTES, config.fetch_max_bytes // 1024), 1)


def security_conf(config: KafkaSourceConfig) -> dict[str, Any]:
    """Connection and security properties: SASL PLAIN/SCRAM/OAUTHBEARER and TLS (server, mTLS)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "security.protocol": config.security_protocol.lower(),
    }
    if config.security_protocol.startswith("SASL") and config.sasl_mechanism == "OAUTHBEARER":
        # The token comes from the hook, through the `oauth_cb` the source adds
        # (`librdkafka_oauth`: it needs the running loop).
        conf["sasl.mechanism"] = "OAUTHBEARER"
    elif config.security_protocol.startswith("SASL"):
        assert config.sasl_plain_password is not None  # the config validator made sure
        conf.update({
            "sasl.mechanism": config.sasl_mechanism,
            "sasl.username": config.sasl_plain_username,
            "sasl.password": config.sasl_plain_password.get_secret_value(),
        })  # fmt: skip
    if config.security_protocol.endswith("SSL"):
        tls = {
            "ssl.ca.location": config.ssl_cafile,
            "ssl.certificate.location": config.ssl_certfile,
            "ssl.key.location": config.ssl_keyfile,
            "ssl.key.password": (
                config.ssl_key_password.get_secret_value() if config.ssl_key_password else None
            ),
        }
        conf.update({k: v for k, v in tls.items() if v is not None})
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if config.ssl_check_hostname else "none"
        )
    return conf


def consumer_conf(config: KafkaSourceConfig) -> dict[str, Any]:
    """The consumer's properties (callbacks and the logger are added by the source)."""
    conf = {
        **security_conf(config),
        "group.id": config.group_id,
        "client.id": config.client_id,
        "group.protocol": config.group_protocol,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": LIBRDKAFKA_RESET,  # the source sets where no checkpoint is
        "max.poll.interval.ms": config.max_poll_interval_ms,
        "fetch.max.bytes": config.fetch_max_bytes,
        # librdkafka refuses a fetch.max.bytes below message.max.bytes (1 MB, a request
        # size: a consumer's requests are small), so a small fetch cap lowers it.
        "message.max.bytes": min(MESSAGE_MAX_BYTES, config.fetch_max_bytes),
        "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
        "fetch.min.bytes": config.fetch_min_bytes,
        "fetch.wait.max.ms": config.fetch_max_wait_ms,
        "check.crcs": config.check_crcs,
        "isolation.level": config.isolation_level,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "queued.max.messages.kbytes": queue_kbytes(config),
        # A partition's end, in order with its messages: where reading stands when a
        # reset left no record to say so (a log deleted to its end, `expiry`).
        "enable.partition.eof": True,
    }
    if config.group_protocol == "classic":
        # Eager rebalances, as with aiokafka: every assignment is announced whole. The
        # consumer protocol has no client-side assignor and its own session settings.
        conf.update({
            "partition.assignment.strategy": "range,roundrobin",
            "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": config.heartbeat_interval_ms,
        })  # fmt: skip
    if config.group_instance_id:
        conf["group.instance.id"] = config.group_instance_id
    return conf
