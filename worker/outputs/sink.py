"""Where outputs go at a checkpoint: the one place that orders them against the offsets.

The committer hands each commit round's outputs (those the round's positions cover)
and positions to the sink, which alone decides how they reach Kafka:

- `AckedOutputs` (at least once): an idempotent producer (acks=all) sends the outputs
  and every one is acknowledged before the offsets go to the source; a produce that
  fails fails the round (`OutputsFailed`), nothing is committed, and the round is tried
  again (outputs already acknowledged are not sent again: the partition drops them when
  told `mark_outputs_sent`). A crash between the acks and the commit sends them again:
  duplicates, never a gap.
- `TransactionalOutputs` (exactly once, `worker.outputs.transactions`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.errors import StartError
from worker.observe.metrics_outputs import OutputMetrics
from worker.outputs.config import OutputsConfig
from worker.outputs.outbox import Output
from worker.outputs.produce import BATCH_BYTES, produce
from worker.sources.base import Source
from worker.sources.kafka.preflight import described, servers_of, topics_problem

log = logging.getLogger("worker.outputs")


class Holder(Protocol):
    """A partition, as the sink sees it: its key and the outputs it keeps."""

    key: Hashable

    def outputs_upto(self, position: int) -> list[Output]: ...

    def mark_outputs_sent(self, position: int) -> None: ...


class OutputSink(Protocol):
    #: How long one commit round carrying outputs may take before it counts as failed.
    round_timeout_s: float

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def assigned(self, source: Source, keys: Sequence[Hashable]) -> None:
        """Partitions are being taken (before any of their records is handled here)."""

    async def revoked(self, keys: Sequence[Hashable]) -> None:
        """Partitions left, after their last commit here."""

    async def checkpoint(
        self, source: Source, moved: Sequence[tuple[Holder, int]]
    ) -> Mapping[Hashable, Exception]:
        """Commit `moved` (partition, position) with the outputs those positions cover.
        Returns the partitions whose checkpoint failed, with why (OwnershipLost: taken
        away); raises if the whole round failed."""
        ...


class OutputsFailed(ConnectionError):
    """Outputs were not acknowledged: the round commits nothing and is tried again."""


class AckedOutputs:
    def __init__(
        self,
        connection: dict[str, Any],
        config: OutputsConfig,
        metrics: OutputMetrics,
        source_name: str,
        connect_timeout_s: float,
    ) -> None:
        self._connection = connection
        self._config = config
        self._metrics = metrics
        self._source_name = source_name
        self._connect_timeout_s = connect_timeout_s
        self._errors = metrics.produce_errors.labels(source_name)
        self._sent = {t: metrics.sent.labels(source_name, t) for t in config.topics}
        self._producer: AIOKafkaProducer | None = None
        self.round_timeout_s = 6 * config.timeout_s

    def producer_settings(self) -> dict[str, Any]:
        return {
            **self._connection,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self._config.linger_ms,
            "max_batch_size": BATCH_BYTES,
            # An output as large as send takes, in a request of its own.
            "max_request_size": max(1024**2, self._config.max_message_bytes + 64 * 1024),
            "request_timeout_ms": int(self._config.timeout_s * 1000),
        }

    async def check_topics(self) -> None:
        """The topics exist: the worker creates none."""
        problem = await topics_problem(
            self._connection, self._config.topics, self._connect_timeout_s, "outputs.topics",
            "topic ",
        )  # fmt: skip
        if problem is not None:
            raise StartError(problem)

    async def start(self) -> None:
        await self.check_topics()
        self._producer = producer = AIOKafkaProducer(**self.producer_settings())
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise StartError(
                f"outputs: cannot connect to {servers_of(self._connection)}: {described(exc)}"
            ) from None

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def assigned(self, source: Source, keys: Sequence[Hashable]) -> None:
        return None

    async def revoked(self, keys: Sequence[Hashable]) -> None:
        return None

    async def send_all(self, outputs: Sequence[Output]) -> None:
        """Produce every output and wait for all the acks; OutputsFailed if one failed."""
        assert self._producer is not None, "start() first"
        try:
            await produce(self._producer, outputs)
        except KafkaError as exc:
            self._errors.inc()
            raise OutputsFailed(f"outputs: not acknowledged: {described(exc)}") from exc
        self.count_sent(outputs)

    def count_sent(self, outputs: Sequence[Output]) -> None:
        by_topic: dict[str, int] = {}
        for o in outputs:
            by_topic[o.topic] = by_topic.get(o.topic, 0) + 1
        for topic, n in by_topic.items():
            self._sent[topic].inc(n)

    async def checkpoint(
        self, source: Source, moved: Sequence[tuple[Holder, int]]
    ) -> Mapping[Hashable, Exception]:
        await acked_then_committed(source, moved, self.send_all)
        return {}


async def acked_then_committed(
    source: Source,
    moved: Sequence[tuple[Holder, int]],
    send: Callable[[Sequence[Output]], Awaitable[None]],
) -> None:
    """At least once: send the outputs the positions cover and have every one
    acknowledged, then commit the positions (a commit that fails after the acks does not
    send them again). A crash between the two sends them again: duplicates, no gap."""
    outputs = [o for p, position in moved for o in p.outputs_upto(position)]
    if outputs:
        await send(outputs)
        for p, position in moved:
            p.mark_outputs_sent(position)
    await source.commit({p.key: position for p, position in moved})
