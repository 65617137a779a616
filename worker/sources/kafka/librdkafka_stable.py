"""The last stable offset of librdkafka's partitions, read from its statistics.

Under read_committed, reading stops at a partition's last stable offset while a
transaction is open there (a producer that hangs holds it up to its transaction
timeout: 15 min at the broker's most). librdkafka's cached high watermark is past it,
and confluent-kafka exposes the last stable offset nowhere but in librdkafka's
statistics, so the source said records were waiting at a partition where nothing was
readable, and the commit watchdog ended a worker that had handled everything
(exit 3 after `stall_timeout_s`, measured on the real broker). aiokafka keeps the
offset of each fetch response (`markers.readable_end`).

The statistics come every `STATS_INTERVAL_MS` inside `consume()`, on the poller thread:
one JSON document of every broker and partition (about 1 KB a partition, parsed with
orjson). An offset older than `FRESH_S` is not used: a poller that stopped consuming
would otherwise keep records looking unreadable, and the watchdog must see that stall.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import TopicPartition

log = logging.getLogger("worker.source.kafka")

STATS_INTERVAL_MS = 1000
FRESH_S = 3 * STATS_INTERVAL_MS / 1000


class StableOffsets:
    """Each partition's last stable offset as librdkafka last reported it (written on the
    poller thread, read on the loop: one dict replaced whole)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ends: dict[TopicPartition, int] = {}
        self._at = -FRESH_S

    def conf(self, isolation_level: str) -> dict[str, Any]:
        """The consumer settings that send the statistics here (read_committed only: a
        read_uncommitted reader reads to the high watermark)."""
        if isolation_level != "read_committed":
            return {}
        return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.on_stats}

    def on_stats(self, text: str) -> None:
        """librdkafka's statistics (poller thread, inside `consume()`)."""
        try:
            topics = orjson.loads(text).get("topics", {})
            ends = {
                TopicPartition(topic, int(number)): part["ls_offset"]
                for topic, about in topics.items()
                for number, part in about.get("partitions", {}).items()
                if int(number) >= 0 and part.get("ls_offset", -1) >= 0
            }
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            log.debug("event=librdkafka_stats_unread error=%r", str(exc))
            return
        self._ends, self._at = ends, self._clock()

    def readable_end(self, tp: TopicPartition, high: int) -> int:
        """The end reading can reach now: the last stable offset if it is known and
        fresh, else the high watermark `high`."""
        stable = self._ends.get(tp) if self._clock() - self._at < FRESH_S else None
        return high if stable is None else min(high, stable)
