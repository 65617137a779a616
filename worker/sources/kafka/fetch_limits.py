"""The client's fetch limits from the source's share of the memory budget.

aiokafka prefetches: it keeps up to `max_partition_fetch_bytes` of each assigned,
unpaused partition fetched ahead of `getmany` (a partition with results waiting is not
fetched again), in responses of at most `fetch_max_bytes` a broker. So what it holds is
bounded by partitions x the partition limit: 256 partitions at the 2 MiB default are
512 MiB, past any container limit. On every assignment the share is split evenly
between the partitions (never above the configured limits) and written to the running
consumer's fetcher, which reads both limits afresh for every fetch request it builds.

Changing them loses nothing: results already fetched stay as they are, and positions
only move as `getmany` returns records. The limits are not record limits: since fetch
v3 (KIP-74) the broker returns a record batch larger than the limit whole when it is the
first data of a fetch, and sends an empty answer, not a cut one, for a partition further
down, which is fetched again later. So a record larger than a partition's part still
gets through (tested on the real broker).

The fetcher's attributes are aiokafka internals: the aiokafka version is pinned in
`pyproject.toml`, and `tests/unit/test_fetch_limits.py` fails if they disappear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.sources.kafka.config import KafkaSourceConfig

#: The smallest partition limit worth a fetch (the config's own minimum).
MIN_PARTITION_FETCH_BYTES = 1024
#: The attributes of aiokafka's `Fetcher` read for every fetch request.
FETCHER_ATTRIBUTES = ("_max_partition_fetch_bytes", "_fetch_max_bytes")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    partition_bytes: int
    request_bytes: int
    #: The most the client may hold fetched ahead (beyond one batch per partition that is
    #: larger than the partition limit by itself).
    prefetch_bytes: int


def fetch_limits(config: KafkaSourceConfig, share_bytes: int, partitions: int) -> FetchLimits:
    """Split `share_bytes` evenly among `partitions`, within the configured limits."""
    partitions = max(partitions, 1)
    per = max(share_bytes // partitions, MIN_PARTITION_FETCH_BYTES)
    per = min(per, config.max_partition_fetch_bytes)
    request = min(config.fetch_max_bytes, max(per, share_bytes))
    return FetchLimits(per, request, per * partitions)


def apply_limits(consumer: Any, limits: FetchLimits) -> None:
    """Write the limits to a started consumer's fetcher (read at its next request)."""
    fetcher = getattr(consumer, "_fetcher", None)
    missing = [a for a in FETCHER_ATTRIBUTES if not hasattr(fetcher, a)]
    if missing:
        raise RuntimeError(
            f"aiokafka's consumer has no fetcher with {', '.join(missing)}: this aiokafka "
            "version cannot have its fetch limits fitted to the memory budget"
        )
    fetcher._max_partition_fetch_bytes = limits.partition_bytes
    fetcher._fetch_max_bytes = limits.request_bytes
