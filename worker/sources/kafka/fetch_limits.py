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

Many partitions: one response a broker. An even split starves each partition: at the
default budget 256 partitions get 64 KiB each, fewer records a fetch than one batch of
500, so batches wait for a second fetch (or their window) and every fetch is paid per
partition. But a response is bounded in total (`fetch_max_bytes`), and aiokafka sends a
broker no new request while results of an earlier one wait and are younger than its
`prefetch_backoff` (otherwise it sends one after 100 ms, for the partitions with nothing
waiting). With that backoff set beyond reach (`HOLD_S`), the client holds at most one
response a broker, fetched or on the way, however large each partition's part: so past
`SPREAD` partitions a broker the share is split between the brokers, not the partitions,
and a partition may take up to `1 / SPREAD` of a response (within the configured limit),
so each response still carries at least `SPREAD` partitions' data and no deep backlog
takes a whole one. The worker calls `getmany` for every partition in a loop that never
waits on anything else, and a paused or moved partition's waiting results are dropped at
the next call, so waiting results never hold a broker back for long. While any partition
is paused (`PauseAwareLimits`) the partition limit is the even split again: held back by
the budget, a resumed partition taking 2 MiB pushed the buffers over it and the rest of
each response, for paused partitions, was dropped and fetched again (RSS under a slow
handler at 256 partitions: 190-318 MB against the even split's 137-147; 162 with this,
against 147 in the same run). The bound is the responses' either way, so switching needs
no new accounting. Measured (sweep, 256 partitions, batch 500, window 500 ms):
load/results/sweep-256.md. With few
partitions the even split is kept, with aiokafka's own backoff: a next request may then
overlap the end of the last response's consumption, as before.

The fetcher's attributes are aiokafka internals: the aiokafka version is pinned in
`pyproject.toml`, and `tests/unit/test_fetch_limits.py` fails if they disappear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.sources.kafka.config import KafkaSourceConfig

#: The smallest partition limit worth a fetch (the config's own minimum).
MIN_PARTITION_FETCH_BYTES = 1024
#: The attributes of aiokafka's `Fetcher` read for every fetch request (the limits) or
#: every result (the backoff).
FETCHER_ATTRIBUTES = ("_max_partition_fetch_bytes", "_fetch_max_bytes", "_prefetch_backoff")
#: A response carries at least this many partitions' data in the one-response mode.
SPREAD = 8
#: aiokafka's `Fetcher(prefetch_backoff=...)` default, kept while the split is even.
CLIENT_PREFETCH_BACKOFF_S = 0.1
#: The backoff in the one-response mode: results wait for `getmany`, never for a timer
#: (the worker calls it every 0.2 s at most; an hour is "never" without overflowing one).
HOLD_S = 3600.0


@dataclass(frozen=True, slots=True)
class FetchLimits:
    partition_bytes: int
    request_bytes: int
    #: The most the client may hold fetched ahead (beyond one batch per partition that is
    #: larger than the partition limit by itself).
    prefetch_bytes: int
    #: One response a broker at a time (`HOLD_S`): what bounds `prefetch_bytes` then.
    one_response: bool = False
    #: The partition limit while any partition is paused (held back by the budget): the
    #: even split. A resumed partition then takes a small part again, not a whole
    #: `partition_bytes` that pushes the buffers over the budget and the rest of the
    #: response, paused, into garbage fetched again later (measured: with 2 MiB parts
    #: under a slow handler, 1.3-2x the RSS of the even split). 0: `partition_bytes`.
    held_back_bytes: int = 0


def fetch_limits(
    config: KafkaSourceConfig, share_bytes: int, partitions: int, brokers: int | None = None
) -> FetchLimits:
    """Split `share_bytes` evenly among `partitions`, within the configured limits; or,
    with the `brokers` known and a partition's part larger that way, among the brokers
    with one response a broker at a time (see the module's docstring)."""
    partitions = max(partitions, 1)
    even = max(share_bytes // partitions, MIN_PARTITION_FETCH_BYTES)
    even = min(even, config.max_partition_fetch_bytes)
    if brokers:
        request = min(
            config.fetch_max_bytes, max(share_bytes // brokers, MIN_PARTITION_FETCH_BYTES)
        )
        per = min(
            config.max_partition_fetch_bytes, max(request // SPREAD, MIN_PARTITION_FETCH_BYTES)
        )
        if per > even:
            return FetchLimits(per, request, min(per * partitions, request * brokers), True, even)
    request = min(config.fetch_max_bytes, max(even, share_bytes))
    return FetchLimits(even, request, even * partitions)


def broker_count(consumer: Any) -> int | None:
    """The brokers in a started consumer's metadata (every partition's leader, and every
    replica it may read from, is one); None when it cannot tell (the even split then)."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    try:
        return len(cluster.brokers()) or None  # type: ignore[union-attr]
    except AttributeError:
        return None


def apply_limits(consumer: Any, limits: FetchLimits, held_back: bool = False) -> None:
    """Write the limits to a started consumer's fetcher (read at its next request);
    `held_back`: some partition is paused."""
    fetcher = getattr(consumer, "_fetcher", None)
    missing = [a for a in FETCHER_ATTRIBUTES if not hasattr(fetcher, a)]
    if missing:
        raise RuntimeError(
            f"aiokafka's consumer has no fetcher with {', '.join(missing)}: this aiokafka "
            "version cannot have its fetch limits fitted to the memory budget"
        )
    fetcher._max_partition_fetch_bytes = partition_limit(limits, held_back)
    fetcher._fetch_max_bytes = limits.request_bytes
    fetcher._prefetch_backoff = HOLD_S if limits.one_response else CLIENT_PREFETCH_BACKOFF_S


def partition_limit(limits: FetchLimits, held_back: bool) -> int:
    """The partition limit to fetch with: the even split while partitions are held back.
    Either way the client holds at most `prefetch_bytes`: in the one-response mode that
    bound is the responses', whatever a partition's part of them."""
    return (
        limits.held_back_bytes if held_back and limits.held_back_bytes else limits.partition_bytes
    )


class PauseAwareLimits:
    """The fitted limits of one consumer, and which of its partitions are paused: the
    partition limit drops to the even split on the first pause and returns on the last
    resume (O(1) each; the fetcher reads it at its next request)."""

    def __init__(self) -> None:
        self.limits: FetchLimits | None = None
        self._paused: set[Any] = set()

    def fit(self, consumer: Any, limits: FetchLimits) -> None:
        """At an assignment change: the new limits; paused partitions given away are
        forgotten (a revoke resumes none). Only the budget's pauses count: a partition
        held while its assignment is announced is not held back."""
        self.limits = limits
        self._paused &= set(consumer.assignment())
        apply_limits(consumer, limits, bool(self._paused))

    def paused(self, consumer: Any, partition: Any) -> None:
        first = not self._paused
        self._paused.add(partition)
        if first and self.limits is not None:
            fetcher = consumer._fetcher
            fetcher._max_partition_fetch_bytes = partition_limit(self.limits, True)

    def resumed(self, consumer: Any, partition: Any) -> None:
        if partition not in self._paused:
            return
        self._paused.discard(partition)
        if not self._paused and self.limits is not None:
            fetcher = consumer._fetcher
            fetcher._max_partition_fetch_bytes = partition_limit(self.limits, False)
