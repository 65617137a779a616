"""Kafka source on aiokafka: a consumer group member with explicit, position-based commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    UnknownTopicOrPartitionError,
)

from worker.observe.metrics import Metrics
from worker.sources.base import (
    AssignmentListener,
    NothingCommitted,
    OwnershipLost,
    SourceFailed,
    SourceStartError,
    next_to_read,
)
from worker.sources.kafka.aiokafka_orphans import CancelledCommits
from worker.sources.kafka.aiokafka_rebalance import RebalanceBridge
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.expiry import AIOKAFKA_RESET, ExpiredOffsets, oldest_left
from worker.sources.kafka.fetch_limits import PauseAwareLimits, broker_count, fetch_limits
from worker.sources.kafka.markers import FetchTrust, fetch_position, past_markers, readable_end
from worker.sources.kafka.notes import CommitNotes
from worker.sources.kafka.preflight import check_source
from worker.sources.kafka.reach import BrokerProbe, Reachability, attach_gauges
from worker.sources.kafka.record import TRAITS
from worker.sources.kafka.refetch import Refetch
from worker.sources.kafka.security import (
    auth_failure_message,
    client_kwargs,
    watch_for_auth_failure,
)
from worker.sources.kafka.start_commit import FreshStarts, owed_with

log = logging.getLogger("worker.source.kafka")

#: What a member failing stop needs before the group would give its partitions away: the
#: worker's short shutdown and its backstop (2 s), and some slack.
REVOKE_EXIT_MARGIN_S = 3.0


class KafkaSource:
    name = "kafka"
    traits = TRAITS

    def __init__(self, config: KafkaSourceConfig) -> None:
        self._config = config
        self._committed: dict[TopicPartition, int] = {}
        #: Partitions whose last commit raised: it may have landed past `_committed`, so no
        #: note is flushed at `_committed` (a commit behind the group's offset) until one lands.
        self._in_doubt: set[TopicPartition] = set()
        #: Taken with no checkpoint of the group's, until their start is committed.
        self._fresh = FreshStarts()
        #: Partitions the listener was told of; only their records are returned.
        self._announced: set[TopicPartition] = set()
        self._failure: SourceFailed | None = None
        self._reach = Reachability()
        self._limits = PauseAwareLimits()
        self._trust = FetchTrust()  # whose fetch positions may be committed (markers)
        self._refetch = Refetch(config.fetch_max_records)  # what a failed getmany dropped
        self._notes = CommitNotes(client_kwargs(config), config.group_id)
        self._expired = ExpiredOffsets(self.name)
        self._cancelled = CancelledCommits()  # their requests left in flight: said
        self._consumer = AIOKafkaConsumer(
            **client_kwargs(config),
            group_id=config.group_id,
            group_instance_id=config.group_instance_id,
            client_id=config.client_id,
            enable_auto_commit=False,
            auto_offset_reset=AIOKAFKA_RESET,  # `prepare` seeks where no checkpoint is
            session_timeout_ms=config.session_timeout_ms,
            rebalance_timeout_ms=config.rebalance_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms,
            fetch_max_bytes=config.fetch_max_bytes,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            fetch_min_bytes=config.fetch_min_bytes,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            check_crcs=config.check_crcs,
            isolation_level=config.isolation_level,
        )

    @property
    def revoke_hold_s(self) -> float:
        """How long from a revoke's start this member can keep its partitions from others.

        The coordinator waits `rebalance_timeout_ms` for every member to rejoin, counted
        from the rebalance's start, which a member learns of at its next heartbeat (up to
        `heartbeat_interval_ms` later); aiokafka keeps heartbeating while the revoke
        callback runs, so the session holds. Past the timeout the member is dropped and its
        partitions given away: a worker must be gone (its stuck handler thread with it)
        by then, so it fails stop `REVOKE_EXIT_MARGIN_S` earlier."""
        c = self._config
        return (c.rebalance_timeout_ms - c.heartbeat_interval_ms) / 1000 - REVOKE_EXIT_MARGIN_S

    def attach(self, metrics: Metrics) -> None:
        self._reach = attach_gauges(metrics.registry, self.name, self._config.group_id)
        self._expired.attach(metrics)
        self._refetch.count_with(metrics.poll_errors.labels(self.name).inc)

    async def start(self, listener: AssignmentListener) -> None:
        await check_source(self._config)  # else aiokafka waits on a missing topic for ever
        self._consumer.subscribe(self._config.topics, listener=RebalanceBridge(self, listener))
        with watch_for_auth_failure() as watch:
            try:
                await self._consumer.start()
            except KafkaConnectionError as exc:
                await self._consumer.stop()
                if watch.auth_failed:
                    raise SourceStartError(
                        "kafka: " + auth_failure_message(client_kwargs(self._config))
                    ) from None
                servers = ",".join(self._config.bootstrap_servers)
                raise SourceStartError(f"kafka: cannot connect to {servers}: {exc}") from None
            except asyncio.CancelledError:  # SIGTERM while joining: leave nothing open
                await self._abandon_start()
                raise
            except UnknownTopicOrPartitionError:
                await self._consumer.stop()
                raise SourceStartError(
                    f"kafka: source.topics {self._config.topics}: not found at "
                    f"{','.join(self._config.bootstrap_servers)} (create them first)"
                ) from None
        probe = BrokerProbe(client_kwargs(self._config), self._reach)
        listener.spawn(probe.run(), "kafka broker probe")

    async def _abandon_start(self) -> None:
        """Close a consumer whose start was cancelled, without finishing its group join.

        `stop()` awaits aiokafka's coordination task, and a join in flight waits at the
        broker for every member (a new group's initial delay, a stuck peer: up to the
        rebalance timeout); a SIGTERM then would wait that long. The task is cancelled
        first: this member has handled nothing, there is nothing of it to finish.
        """
        coordinator = self._consumer._coordinator
        task = getattr(coordinator, "_coordination_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        await self.stop()

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop what this member knew of partitions it gave away."""
        for tp in partitions:
            self._committed.pop(tp, None)
            self._announced.discard(tp)
        self._in_doubt.difference_update(partitions)
        self._fresh.forget(partitions)
        self._notes.forget(partitions)
        self._trust.forget(partitions)
        self._refetch.forget(partitions)

    def fail(self, doing: str, partitions: Sequence[TopicPartition], exc: Exception) -> None:
        """A rebalance callback failed: the next fetch says so, and the worker stops."""
        names = ",".join(map(self.label, partitions))
        self._failure = self._failure or SourceFailed(
            f"kafka: {doing} partitions {names} failed: {type(exc).__name__}: {exc}"
        )

    def hold(self, partitions: Sequence[TopicPartition]) -> None:
        """Assigned, but the listener does not have them yet: fetch none of their records."""
        if partitions:
            self._consumer.pause(*partitions)

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """The listener has them: their records may flow."""
        self._announced.update(partitions)
        self._trust.started(self._consumer, partitions, self._committed)
        self._refetch.started(partitions, self._committed)
        if partitions:
            self._consumer.resume(*partitions)
        for tp in partitions:  # a budget's pause that survived a re-assignment ends here
            self._limits.resumed(self._consumer, tp)

    async def resume_from_committed(self, partitions: Sequence[TopicPartition]) -> None:
        """Read the committed offsets again and seek there (exactly once, after the
        earlier owner's producers were fenced: a transaction it committed before the
        fence counts, none can follow). The partitions are still held: nothing of what
        was fetched from an older offset reaches the pipeline."""
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            if committed is not None:
                self._consumer.seek(tp, committed)
                self._committed[tp] = committed
                self._fresh.checkpointed(tp)

    async def committed_offset(self, partition: TopicPartition) -> int | None:
        """The group's checkpoint of `partition` as the broker has it now (next to read)."""
        return await self._consumer.committed(partition)

    async def prepare(self, partitions: list[TopicPartition]) -> None:
        """Read committed offsets (for lag) and notes, and seek where the group has none."""
        await self._notes.load(partitions)
        fresh = []
        for tp in partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:
                fresh.append(tp)
            else:  # a valid position before the first fetch: see `FetchTrust.started`
                self._fresh.checkpointed(tp)
                self._consumer.seek(tp, committed)
                self._committed[tp] = committed
        if not fresh:
            return
        # Seek to the offsets read, so reading starts where `_committed` says
        # (flush_notes commits there: never past an unread record).
        starts = await self._starts(fresh)
        for tp in fresh:
            start = self._fresh.found(tp, starts[tp])
            self._consumer.seek(tp, start)
            self._committed[tp] = start

    async def _starts(self, fresh: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Where `starting_position` puts partitions the group has no checkpoint of."""
        if self._config.starting_position == "at_timestamp":
            ts_ms = int(self._config.starting_position_timestamp * 1000)
            found = await self._consumer.offsets_for_times({tp: ts_ms for tp in fresh})
            ends = await self._consumer.end_offsets(fresh)
            return {tp: hit.offset if (hit := found.get(tp)) is not None else ends[tp]
                    for tp in fresh}  # fmt: skip
        if self._config.starting_position == "trim_horizon":
            return await self._consumer.beginning_offsets(fresh)
        return await self._consumer.end_offsets(fresh)

    async def commit_starts(self, partitions: Sequence[TopicPartition]) -> None:
        """The listener has them, still held: the start of each the group had no
        checkpoint of becomes its checkpoint (`start_commit`)."""
        await self._fresh.commit(partitions, self._committed, self.commit, self.label)

    async def fetch(self, timeout_s: float) -> Mapping[TopicPartition, Sequence[Any]]:
        if self._failure is not None:
            raise self._failure
        try:
            chunks = await self._refetch.getmany(self._consumer, timeout_s)
        except Exception:
            self._trust.failed()
            raise
        if self._refetch.out_of_range:  # nothing of theirs drained: read from the oldest
            out = self._refetch.take_out_of_range()
            self._trust.forget(out)  # only these moved; another emptied log stays trusted
            starts = await oldest_left(self._consumer, out, self._expired, self.label)
            self._trust.returned(self._consumer, starts)  # all below returned or counted
            self._refetch.started(starts, starts)
        announced = self._announced
        for tp in [tp for tp in chunks if tp not in announced]:
            # Never hand out what nobody may take: read it again once announced (or, if it
            # was revoked meanwhile, the next owner reads it from the commit).
            first = chunks.pop(tp)[0].offset
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, first)
        self._trust.returned(self._consumer, chunks)
        self._refetch.returned(chunks)
        return chunks

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        """Fetch limits from the share, written to the running consumer (see
        `fetch_limits`); a paused partition is not fetched, so `pause` stops its prefetch."""
        brokers = broker_count(self._consumer)
        limits = fetch_limits(self._config, share_bytes, partitions, brokers)
        self._limits.fit(self._consumer, limits)
        log.info("event=fetch_limits partitions=%d partition_bytes=%d request_bytes=%d "
                 "brokers=%s one_response=%s", partitions, limits.partition_bytes,
                 limits.request_bytes, brokers, limits.one_response)  # fmt: skip
        return limits.prefetch_bytes

    def pause(self, partition: TopicPartition) -> None:
        self._consumer.pause(partition)
        self._limits.paused(self._consumer, partition)

    def resume(self, partition: TopicPartition) -> None:
        if partition in self._consumer.assignment():
            self._consumer.resume(partition)
        self._limits.resumed(self._consumer, partition)

    async def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Commit what is still assigned; name the rest lost (aiokafka would refuse the
        whole call for one partition it no longer has, and the others' progress with it)."""
        await self._commit(positions, self._to_group)

    async def _to_group(self, offsets: Mapping[TopicPartition, Any], group_id: str) -> None:
        await self._cancelled.commit(self._consumer.commit(offsets), offsets, self.label)

    async def commit_in_transaction(
        self,
        positions: Mapping[TopicPartition, int],
        commit: Callable[[Mapping[TopicPartition, Any], str], Awaitable[None]],
    ) -> None:
        """`commit`, but the offsets (with their notes) and the group id go to `commit`: a
        transactional producer's, which commits them with its outputs (exactly once).
        After any request of theirs a cancelled commit of the consumer left in flight
        (`CancelledCommits.settled`): it goes on another connection and, landing after
        the transaction, would move the checkpoint back."""
        await self._cancelled.settled(positions)
        await self._commit(positions, commit)

    async def _commit(
        self,
        positions: Mapping[TopicPartition, int],
        commit: Callable[[Mapping[TopicPartition, Any], str], Awaitable[None]],
    ) -> None:
        assigned = self._consumer.assignment()
        offsets = {tp: next_to_read(pos) for tp, pos in positions.items() if tp in assigned}
        gone = [tp for tp in positions if tp not in assigned]
        if offsets:
            self._in_doubt.update(offsets)  # until it is known to have landed
            passing = self._fresh.sent(offsets)
            try:
                await commit(self._notes.with_notes(offsets), self._config.group_id)
                self._notes.written(offsets)
                self._fresh.landed(offsets)
            except NothingCommitted:
                self._fresh.unsent(passing)
                raise
            except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
                raise OwnershipLost(str(exc), positions) from exc
            except KafkaError as exc:
                raise ConnectionError(f"kafka commit failed: {exc}") from exc
            self._committed.update(offsets)
            self._in_doubt.difference_update(offsets)
        if gone:
            raise OwnershipLost(f"not assigned: {', '.join(map(self.label, gone))}", gone)

    def keep_notes(self) -> None:
        self._notes.keep()

    def remember(self, partition: TopicPartition, note: str) -> None:
        self._notes.remember(partition, note)

    def recall(self, partition: TopicPartition) -> str:
        return self._notes.recall(partition)

    async def flush_notes(self) -> None:
        """Write changed notes at the positions already committed (nothing moves), and
        the starts not known to be committed (`FreshStarts.owed`: a revoke's or
        shutdown's final commit with nothing handled sends them)."""
        unwritten = self._notes.unwritten()
        assigned = self._consumer.assignment()
        owed = self._fresh.owed(assigned)
        if not unwritten and not owed:
            return
        doubt = self._in_doubt
        due = {tp: self._committed[tp] for tp in unwritten
               if tp in assigned and tp in self._committed and tp not in doubt}  # fmt: skip
        await owed_with(self._fresh, owed, due, self.commit, self.label)

    def label(self, partition: TopicPartition) -> str:
        return f"{partition.topic}-{partition.partition}"

    def lag(self, partition: TopicPartition) -> int | None:
        if partition not in self._consumer.assignment():
            return None
        end = self._consumer.highwater(partition)
        done = self._committed.get(partition)
        if end is None or done is None:
            return None
        return max(end - done, 0)

    def read_through(self, partition: TopicPartition) -> int | None:
        """Past the markers aiokafka skipped, once its position can be trusted (`markers`)."""
        if partition not in self._announced:
            return None
        end = readable_end(self._consumer, partition, self._config.isolation_level)
        position = self._trust.position(self._consumer, partition)
        return past_markers(position, self._committed.get(partition), end)

    def waiting(self, partition: TopicPartition) -> bool:
        """Records past what this member has taken: the end against the fetch position.

        Not the lag: a topic written with transactions ends in a commit marker that is
        never delivered, so the committed offset stays one short of the end until the
        settler passes it (`read_through`): a caught-up worker must not look stalled."""
        if partition not in self._consumer.assignment():
            return False
        end = readable_end(self._consumer, partition, self._config.isolation_level)
        position = fetch_position(self._consumer, partition)
        if end is None or position is None:
            return bool(self.lag(partition))
        return end > position

    async def stop_taking(self) -> None:
        """The group coordinator assigns partitions until the consumer leaves, in `stop`."""

    async def stop(self) -> None:
        try:
            await self._consumer.stop()
        finally:
            await self._notes.close()
