"""The worker's own view of which Kafka brokers it can reach, logged once per change.

aiokafka retries a lost broker for ever and says so in a flood of ERROR lines
(about 50 a second with two of three brokers down), while the worker itself
said nothing: an operator reading our log could not tell an outage from a
quiet topic. So a small client of our own asks every broker it has ever seen
for its API versions every few seconds: one WARNING names a broker the moment
it stops answering (and since when), one INFO says when it answers again and
how long it was away. A gauge counts the brokers away now.

Its own connection, not the consumer's: the consumer's connections and their
state are aiokafka's private business, and an ApiVersions round trip is the
cheapest request a broker answers, so the probe costs a few bytes a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import ApiVersionRequest
from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("worker.source.kafka")

#: Seconds between probes: an outage is named within about this long.
PROBE_INTERVAL_S = 2.0


class Reachability:
    """Which brokers are away and since when; it logs each change once.

    Kept apart from the probing so the rule "one line when a broker goes, one when it
    is back, with how long" can be tested without a broker.
    """

    def __init__(
        self,
        on_change: Callable[[int], None] = lambda away: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        #: node id -> (address, monotonic and wall time it was first seen away)
        self._away: dict[int, tuple[str, float, float]] = {}

    def away(self) -> list[str]:
        return [address for address, _, _ in self._away.values()]

    def observe(self, answered: Mapping[int, tuple[str, bool]]) -> None:
        """One round of probes: node id -> (address, answered)."""
        gone = {n: a for n, (a, ok) in answered.items() if not ok and n not in self._away}
        back = [n for n, (_, ok) in answered.items() if ok and n in self._away]
        if gone:
            now, wall = self._clock(), self._wall()
            for node, address in gone.items():
                self._away[node] = (address, now, wall)
            since = datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")
            log.warning(
                "event=brokers_unreachable brokers=%s since=%s away=%d of=%d note='the "
                "client retries; partitions they lead wait, commits wait if one was the "
                "group coordinator'", _names(gone), since, len(self._away), len(answered),
            )  # fmt: skip
        if back:
            now = self._clock()
            returned = {n: self._away.pop(n) for n in back}
            after = max(now - started for _, started, _ in returned.values())
            log.info(
                "event=brokers_reachable brokers=%s after_s=%.1f away=%d",
                _names({n: a for n, (a, _, _) in returned.items()}), after, len(self._away),
            )  # fmt: skip
        if gone or back:
            self._on_change(len(self._away))


def _names(nodes: Mapping[int, str]) -> str:
    return ",".join(f"{node}@{address}" for node, address in sorted(nodes.items()))


class BrokerProbe:
    """Asks each broker the cluster ever named for its API versions, every few seconds."""

    def __init__(
        self,
        client_kwargs: Mapping[str, object],
        reachability: Reachability,
        interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._client = AIOKafkaClient(
            **client_kwargs, client_id="streamworker-probe", request_timeout_ms=5000
        )
        self._reach = reachability
        self._interval_s = interval_s
        #: Every broker the metadata ever named: a dead one leaves the metadata in time,
        #: and it is still away.
        self._known: dict[int, str] = {}
        self._started = False
        self._said_started = False

    async def run(self) -> None:
        """The probe loop: a supervised task of the source's; it never raises on a broker
        error (that is what it reports), only on a bug."""
        try:
            while True:
                self._reach.observe(await self._round())
                await asyncio.sleep(self._interval_s)
        finally:
            await self._client.close()

    async def _round(self) -> dict[int, tuple[str, bool]]:
        timeout = self._interval_s * 2
        if not self._started:
            try:
                await asyncio.wait_for(self._client.bootstrap(), timeout)
                self._started = True
            except (TimeoutError, KafkaError, OSError):
                return {-1: (self._bootstrap(), False)}  # not one bootstrap server answered
        try:
            cluster = await asyncio.wait_for(self._client.fetch_all_metadata(), timeout)
            for broker in cluster.brokers():
                self._known[broker.nodeId] = f"{broker.host}:{broker.port}"
        except (TimeoutError, KafkaError, OSError):
            pass  # the cached metadata still names them; each is asked below
        answers = await asyncio.gather(*(self._answers(n, timeout) for n in self._known))
        seen = {n: (a, ok) for (n, a), ok in zip(self._known.items(), answers, strict=True)}
        if not self._said_started:  # clears a failed bootstrap, once
            seen[-1] = (self._bootstrap(), True)
            self._said_started = True
        return seen

    def _bootstrap(self) -> str:
        return "bootstrap:" + "+".join(f"{host}:{port}" for host, port, _ in self._client.hosts)

    async def _answers(self, node: int, wait_s: float) -> bool:
        try:
            await asyncio.wait_for(self._client.send(node, ApiVersionRequest()), wait_s)
        except (TimeoutError, KafkaError, OSError):
            return False
        return True


def attach_gauges(registry: CollectorRegistry, source: str, group_id: str) -> Reachability:
    """The Kafka source's own gauges, whichever client runs: brokers unreachable (the
    returned `Reachability` keeps it), and the group's name as a label, for the recording
    rules that turn worker_offset_lag_records into kafka_consumergroup_lag (config/
    recording.yml)."""
    away = Gauge(
        "worker_brokers_unreachable",
        "Kafka brokers that did not answer the worker's last probe (every 2 s).",
        ("source",),
        registry=registry,
    ).labels(source)
    Gauge(
        "worker_kafka_consumer_group_info",
        "Always 1: the consumer group this worker belongs to, as a label.",
        ("source", "consumergroup"),
        registry=registry,
    ).labels(source, group_id).set(1)
    return Reachability(on_change=away.set)
