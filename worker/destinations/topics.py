"""What reading a DLQ topic back needs: the client settings, the topic, the time to start at.

Shared by `worker dlq` and `worker redrive`, so both take the same
`--from kafka://TOPIC`, `--bootstrap`/`--config` and `--since`, and `--since`
accepts what `worker redrive` prints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.config_load import load_config
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.security import client_kwargs

#: How `worker redrive` prints a time, and the one `--since` form that is not a number.
SINCE_PREFIX = "timestamp_ms="
SINCE_ALLOWED = (
    "allowed: epoch seconds (1764662400), timestamp_ms=EPOCH_MS as `worker redrive` prints "
    "it, or an ISO 8601 time (2026-11-24T10:00:00Z; without a zone, UTC)"
)


def parse_since(text: str, now_s: float | None = None) -> int:
    """`--since` as epoch milliseconds; ValueError, saying what is allowed, if it is not a
    time or is in the future (nothing could be found after it)."""
    value = text.strip()
    try:
        if value.startswith(SINCE_PREFIX):
            since_ms = int(value.removeprefix(SINCE_PREFIX))
        else:
            try:
                since_ms = int(float(value) * 1000)
            except ValueError:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                since_ms = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise ValueError(f"--since {text!r}: not a time ({SINCE_ALLOWED})") from None
    now_ms = int((time.time() if now_s is None else now_s) * 1000)
    if since_ms > now_ms:
        hint = f"; milliseconds are written {SINCE_PREFIX}N" if since_ms > now_ms * 100 else ""
        raise ValueError(
            f"--since {text!r} is {shown_time(since_ms)}, in the future (now "
            f"{shown_time(now_ms)}): nothing was dead-lettered after it{hint}"
        )
    if since_ms < 0:
        raise ValueError(f"--since {text!r}: before 1970 ({SINCE_ALLOWED})")
    return since_ms


def shown_time(epoch_ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC with milliseconds (which `--since` accepts)."""
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):  # past year 9999
        return f"{SINCE_PREFIX}{epoch_ms}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def connection_of(bootstrap: Sequence[str] | dict[str, Any]) -> dict[str, Any]:
    """Client settings: a bootstrap list, or the full settings (security included)."""
    if isinstance(bootstrap, dict):
        return bootstrap
    return {"bootstrap_servers": list(bootstrap)}


def kafka_connection(
    bootstrap: str | None, config: Path | None, environ: dict[str, str]
) -> list[str] | dict[str, Any]:
    """`--bootstrap HOST:PORT,...`, else the config's servers and security settings (SASL,
    SSL), else a local broker. ConfigError for a bad config, ValueError for a non-Kafka one."""
    if bootstrap:
        return bootstrap.split(",")
    if config:
        settings = load_config(config, [], environ).source
        if not isinstance(settings, KafkaSourceConfig):
            raise ValueError(f"--config {config}: needs a kafka source")
        return client_kwargs(settings)
    return ["127.0.0.1:9092"]


async def topic_partitions(
    bootstrap: Sequence[str] | dict[str, Any], topic: str
) -> list[TopicPartition]:
    """The topic's partitions from the broker; ValueError if there is no such topic."""
    admin = AIOKafkaAdminClient(**connection_of(bootstrap))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code") or not described.get("partitions"):
        raise ValueError(f"kafka://{topic}: no such topic")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


def kafka_topic(url: str) -> str:
    if not url.startswith("kafka://") or len(url) == len("kafka://"):
        raise ValueError(f"{url!r}: expected kafka://TOPIC")
    return url.removeprefix("kafka://")
