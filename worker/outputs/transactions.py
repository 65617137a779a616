"""Exactly once: each partition's outputs and consumed offsets in one Kafka transaction.

How transactions line up with the rest:
- One transactional producer per owned input partition, `transactional.id` =
  `PREFIX-topic-partition` (PREFIX: `outputs.transactional_id`, default the group id).
  Taking a partition starts its producer (InitProducerId), which fences any earlier
  owner's producer of that partition (a zombie's commit then fails: ProducerFenced) and
  aborts the transaction it left open (a worker killed mid-transaction); then the
  partition resumes from its checkpoint as read after the fence. aiokafka
  commits offsets in a transaction by group id only (TxnOffsetCommit v0, no group
  generation), so the per-partition id is what fences.
- The committer's rounds are the transactions: a round commits, per partition that
  moved, one transaction holding the outputs of the batches its checkpoint covers and
  that checkpoint (`Source.commit_in_transaction`). So coalescing is unchanged (many
  batches per transaction), and an output is committed with exactly the offsets that
  cover its input: the partition's ledger releases only batches at or below the commit
  point, and with key lanes that point is the low watermark, held back so that it never
  cuts a lane's batch (`worker.outputs.ledger`). A lane ahead of the watermark keeps its
  outputs until a later transaction.
- A transaction that fails is aborted (its outputs vanish for read_committed readers),
  its producer replaced, and the round retried: the outputs are still in the ledger.
  A committed one drops them from the ledger at once, so a retried round never sends
  them twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced

from worker.config import WorkerConfig
from worker.observe.metrics_outputs import OutputMetrics
from worker.outputs.outbox import Output
from worker.outputs.produce import produce
from worker.outputs.sink import AckedOutputs, Holder, OutputsFailed
from worker.sources.base import NothingCommitted, OwnershipLost, Source
from worker.sources.kafka.preflight import described

log = logging.getLogger("worker.outputs")


class TransactionAborted(OutputsFailed, NothingCommitted):
    """A transaction that failed before its commit was asked for: none of it landed."""


class TransactionalOutputs:
    def __init__(
        self,
        connection: dict[str, Any],
        config: WorkerConfig,
        metrics: OutputMetrics,
        source_name: str,
        connect_timeout_s: float,
    ) -> None:
        o = config.outputs
        self._prefix = o.transactional_id or config.source.group_id
        self._acked = AckedOutputs(connection, o, metrics, source_name, connect_timeout_s)
        self._timeout_ms = int(o.timeout_s * 1000)
        self.round_timeout_s = 6 * o.timeout_s
        self._committed = metrics.transactions.labels(source_name, "committed")
        self._aborted = metrics.transactions.labels(source_name, "aborted")
        self._errors = metrics.produce_errors.labels(source_name)
        self._producers: dict[Hashable, AIOKafkaProducer] = {}
        self._owned: set[Hashable] = set()
        #: Partition -> checkpoint of a transaction whose commit raised or was cut off: the
        #: broker may have committed it. Settled before the partition's next transaction.
        self._in_doubt: dict[Hashable, int] = {}

    async def check_topics(self) -> None:
        await self._acked.check_topics()

    async def start(self) -> None:
        await self.check_topics()

    async def stop(self) -> None:
        producers, self._producers = list(self._producers.values()), {}
        await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)

    async def assigned(self, source: Source, keys: Sequence[Hashable]) -> None:
        """Fence the partitions' earlier owners before anything of them is handled here,
        then resume from the checkpoints as they are after the fence (the source may have
        read them before it: a zombie's transaction could have committed since)."""
        self._owned.update(keys)
        await asyncio.gather(*(self._producer(k) for k in keys))
        await source.resume_from_committed(keys)

    async def revoked(self, keys: Sequence[Hashable]) -> None:
        """After the partitions' last commit here: their producers go."""
        self._owned.difference_update(keys)
        for k in keys:
            self._in_doubt.pop(k, None)  # the next owner resumes from the checkpoint
        gone = [p for k in keys if (p := self._producers.pop(k, None)) is not None]
        await asyncio.gather(*(p.stop() for p in gone), return_exceptions=True)

    async def _producer(self, key: Hashable) -> AIOKafkaProducer:
        producer = self._producers.get(key)
        if producer is not None:
            return producer
        if key not in self._owned:
            raise OwnershipLost("not assigned here: no transaction for it", [key])
        tp: Any = key
        settings = self._acked.producer_settings()
        settings.pop("enable_idempotence")
        producer = AIOKafkaProducer(
            **settings,
            transactional_id=f"{self._prefix}-{tp.topic}-{tp.partition}",
            transaction_timeout_ms=max(self._timeout_ms * 6, 60_000),
        )
        try:
            await producer.start()  # InitProducerId: the fence
        except KafkaError as exc:
            await producer.stop()
            raise OutputsFailed(f"outputs: transactional producer: {described(exc)}") from exc
        self._producers[key] = producer
        return producer

    async def checkpoint(
        self, source: Source, moved: Sequence[tuple[Holder, int]]
    ) -> Mapping[Hashable, Exception]:
        """One transaction per partition, side by side; a failing one holds back only its
        own partition (the others' are committed and reported so)."""
        results = await asyncio.gather(
            *(self._one(source, p, position) for p, position in moved), return_exceptions=True
        )
        failures: dict[Hashable, Exception] = {}
        for (p, _), result in zip(moved, results, strict=True):
            if isinstance(result, Exception):
                failures[p.key] = result
            elif isinstance(result, BaseException):
                raise result  # cancelled: the round's timeout, or a stop
        return failures

    async def _one(self, source: Source, p: Holder, position: int) -> None:
        producer = await self._producer(p.key)  # a new one has settled an in-doubt commit
        await self._settle(source, p)
        outputs = p.outputs_upto(position)

        async def commit(offsets: Mapping[Any, Any], group_id: str) -> None:
            await self._transaction(producer, (p.key, position), outputs, offsets, group_id)

        await source.commit_in_transaction({p.key: position}, commit)
        p.mark_outputs_sent(position)  # committed: a retried round must not send them again

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        checkpoint: tuple[Hashable, int],
        outputs: Sequence[Output],
        offsets: Mapping[Any, Any],
        group_id: str,
    ) -> None:
        key, ending = checkpoint[0], False
        try:
            await producer.begin_transaction()
            await produce(producer, outputs)
            await producer.send_offsets_to_transaction(offsets, group_id)
            ending = True  # from here on, a failure may come after the broker committed
            await producer.commit_transaction()
        except ProducerFenced as exc:
            self._aborted.inc()
            await self._drop(key)
            raise OwnershipLost(f"fenced: another owner took it ({exc})", [key]) from exc
        except BaseException as exc:
            # Aborted by the broker once the producer is replaced (InitProducerId aborts
            # what the old epoch left open); nothing of it is visible to read_committed,
            # unless it failed in its commit: then the next round asks (`_settle`).
            if ending:
                self._in_doubt[key] = checkpoint[1]
            self._aborted.inc()
            self._errors.inc()
            await self._drop(key)
            if isinstance(exc, KafkaError):
                failed = OutputsFailed if ending else TransactionAborted
                raise failed(f"outputs: transaction aborted: {described(exc)}") from exc
            raise
        self._committed.inc()
        self._acked.count_sent(outputs)

    async def _settle(self, source: Source, p: Holder) -> None:
        """An in-doubt transaction of `p` that did commit (its checkpoint is the group's
        now): its outputs are out, so they must not go in another transaction."""
        doubt = self._in_doubt.get(p.key)
        if doubt is None:
            return
        try:
            committed = await source.committed_offset(p.key)
        except KafkaError as exc:
            raise OutputsFailed(f"outputs: reading the checkpoint: {described(exc)}") from exc
        if committed is not None and committed > doubt:  # the next offset to read
            p.mark_outputs_sent(doubt)
        del self._in_doubt[p.key]

    async def _drop(self, key: Hashable) -> None:
        producer = self._producers.pop(key, None)
        if producer is not None:
            try:
                await asyncio.shield(producer.stop())
            except Exception as exc:  # it failed already: nothing more to lose
                log.debug("event=producer_stop_failed error=%r", exc)
