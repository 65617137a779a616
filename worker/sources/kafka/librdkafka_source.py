"""Kafka source on librdkafka (confluent-kafka): the same contract and semantics as the
aiokafka source, on a faster client that also speaks the KIP-848 group protocol.

Threads: librdkafka's `Consumer` is blocking, and only one thread, the poller, ever
calls it: every `consume()` (and so every rebalance callback, see
`librdkafka_rebalance`), the commits, pause and resume (queued, `librdkafka_calls`:
a commit from another thread stalls during a rebalance) and the final `close()`. The
loop itself only reads local state (`position`, the cached watermarks). `consume()`
runs only while `fetch` awaits it, never ahead: the records it returns reach the
pipeline before the next rebalance can start, as with aiokafka. OAUTHBEARER's `oauth_cb`
runs on librdkafka's own background thread (`librdkafka_oauth`).

Why not `confluent_kafka.aio.AIOConsumer`: it serialises every call behind the one in
flight, and lets a call through during a callback only as a re-entrant call of that
callback's own task. The worker's revoke commits from other tasks (the committer, the
partitions' drain) while `consume()` is blocked in the callback: they would wait for
it, and it for them. Measured raw (load/bench_raw_rdkafka.py, `thread` against `aio`,
same rounds, load/results/librdkafka.md): within the machine's noise in records/s (each
faster in some rounds), and our thread 20% less CPU per record (0.77 against 0.98 s
per million).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiokafka import TopicPartition
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.observe.metrics import Metrics
from worker.sources.base import (
    AssignmentListener,
    OwnershipLost,
    SourceFailed,
    next_to_read,
)
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.expiry import Continuity, ExpiredOffsets
from worker.sources.kafka.librdkafka_calls import (
    PollerCalls,
    commit_sync,
    consume_queued,
    left_at_stop,
    low_watermark,
    read_marks,
    said,
    start_offsets,
)
from worker.sources.kafka.librdkafka_conf import consumer_conf, queue_kbytes
from worker.sources.kafka.librdkafka_corrupt import BadBatches
from worker.sources.kafka.librdkafka_oauth import start_failure, with_tokens
from worker.sources.kafka.librdkafka_rebalance import RebalanceBridge
from worker.sources.kafka.librdkafka_records import TRAITS, by_partition
from worker.sources.kafka.librdkafka_stable import StableOffsets
from worker.sources.kafka.markers import past_markers
from worker.sources.kafka.notes import CommitNotes
from worker.sources.kafka.preflight import check_source
from worker.sources.kafka.reach import BrokerProbe, Reachability, attach_gauges
from worker.sources.kafka.security import client_kwargs
from worker.sources.kafka.source import REVOKE_EXIT_MARGIN_S
from worker.sources.kafka.start_commit import FreshStarts, owed_with

log = logging.getLogger("worker.source.kafka")

#: Reading committed offsets and watermarks for a new assignment (poller thread).
ASSIGN_CALL_TIMEOUT_S = 10.0
#: The ends and positions of partitions no fetch returned records of: read this often.
MARKS_EVERY_S = 1.0
#: A fetch waits this long past its timeout for the poller, then returns nothing and
#: leaves the poll pending for the next fetch: the poller may be held by a commit (one
#: waits up to `session.timeout.ms` for a coordinator in an outage) or a rebalance.
POLL_GRACE_S = 0.5


class LibrdkafkaSource:
    name = "kafka"
    traits = TRAITS

    def __init__(self, config: KafkaSourceConfig) -> None:
        self._config = config
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: AssignmentListener | None = None
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="librdkafka-poll")
        #: Commits, pause and resume, in order, on the poller thread; the loop never
        #: waits on the client for a pause.
        self._calls = PollerCalls(self._poller)
        #: The one topic subscribed (not a "^" pattern), if one: records are then grouped
        #: by partition alone.
        one = len(config.topics) == 1 and not config.topics[0].startswith("^")
        self._topic = config.topics[0] if one else None
        self._committed: dict[TopicPartition, int] = {}
        #: Taken with no checkpoint of the group's, until their start is committed.
        self._fresh = FreshStarts()
        #: (high watermark, fetch position) by partition, read on the poller thread after
        #: each consume(): the loop never asks the client (see `_read_marks`).
        self._marks: dict[TopicPartition, tuple[int, int]] = {}
        self._marks_read = 0.0  # poller thread only
        #: Positions not trusted since a fetch had errors, until records (see `markers`).
        self._suspect: set[TopicPartition] = set()
        self._expired = ExpiredOffsets(self.name)
        self._stable = StableOffsets()  # read_committed: where an open transaction holds
        #: Where each partition's records so far end (poller thread; see `expiry`).
        self._continuity = Continuity(lambda tp: low_watermark(self._consumer, tp))
        self._bad = BadBatches()  # partitions held at a batch that fails its CRC
        #: Assigned to the client and told to the listener: only these are committed,
        #: and only their records are returned.
        self._announced: set[TopicPartition] = set()
        self._failure: SourceFailed | None = None
        self._reach = Reachability()
        self._notes = CommitNotes(client_kwargs(config), config.group_id)
        #: Incremental (KIP-848) assignments name only what changes; eager ones all.
        self.incremental = config.group_protocol == "consumer"
        #: Set before `close()`: its revoke must not reach the listener (drained already).
        self.closing = False
        #: The one `_poll` asked for and not yet handed to a fetch (see `fetch`).
        self._polling: asyncio.Future[Any] | None = None

    @property
    def revoke_hold_s(self) -> float:
        """As for aiokafka (`KafkaSource.revoke_hold_s`): librdkafka's background thread
        keeps heartbeating while the revoke callback waits, and the group waits for the
        rejoin at most `max.poll.interval.ms` (librdkafka's rebalance timeout), which the
        config keeps at or above `rebalance_timeout_ms`: the shorter bound holds."""
        c = self._config
        timeout_ms = min(c.rebalance_timeout_ms, c.max_poll_interval_ms)
        return (timeout_ms - c.heartbeat_interval_ms) / 1000 - REVOKE_EXIT_MARGIN_S

    def attach(self, metrics: Metrics) -> None:
        self._reach = attach_gauges(metrics.registry, self.name, self._config.group_id)
        self._expired.attach(metrics)
        self._bad.count_with(metrics.poll_errors.labels(self.name).inc)

    async def start(self, listener: AssignmentListener) -> None:
        # The one preflight: the broker answers, the credentials and TLS are accepted and
        # every topic exists, in one line if not (librdkafka would retry for ever).
        await check_source(self._config)
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        conf = {
            **consumer_conf(self._config),
            "logger": logging.getLogger("librdkafka"),  # a client's lines: folded (logs.py)
            "error_cb": self._on_error,
            **self._stable.conf(self._config.isolation_level),
        }
        conf = await with_tokens(conf, self._config)  # OAUTHBEARER: the first token, now
        try:  # on the poller: with OAUTHBEARER, Consumer() waits for the hook's token
            self._consumer = await self._loop.run_in_executor(self._poller, Consumer, conf)
        except KafkaException as exc:  # a setting refused, or no token: one line, not a trace
            raise start_failure(conf, exc) from None
        bridge = RebalanceBridge(self, self._loop, self._calls)
        self._consumer.subscribe(
            self._config.topics,
            on_assign=bridge.on_assign,
            on_revoke=bridge.on_revoke,
            on_lost=bridge.on_lost,
        )
        probe = BrokerProbe(client_kwargs(self._config), self._reach)
        listener.spawn(probe.run(), "kafka broker probe")

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client errors (it retries them; the broker probe names outages),
        and the fatal ones, which end the worker: a fenced static member."""
        if error.fatal():
            self._failure = self._failure or SourceFailed(f"kafka: fatal client error: {error}")
            return
        log.debug("event=librdkafka_error error=%r", str(error))

    # -- the rebalance steps (see librdkafka_rebalance) --------------------------------------
    def starts(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> list[Any]:
        """Where each new partition starts: its committed offset, else where
        `starting_position` says (asked now, so `_committed` is where reading starts)."""
        out, fresh = start_offsets(consumer, partitions, self._config, ASSIGN_CALL_TIMEOUT_S)
        new = {(tp.topic, tp.partition) for tp in fresh}
        kept = []
        for tp in out:
            key = TopicPartition(tp.topic, tp.partition)
            if (tp.topic, tp.partition) in new:  # an earlier start kept (`start_commit`)
                tp = RdTopicPartition(tp.topic, tp.partition, self._fresh.found(key, tp.offset))
            else:
                self._fresh.checkpointed(key)
            self._continuity.start(key, tp.offset)
            kept.append(tp)
        return kept

    async def assigned(self, partitions: list[TopicPartition], starts: list[int]) -> None:
        """The listener takes them; then the start of each the group had no checkpoint of
        becomes its checkpoint (`start_commit`), before the callback assigns them to the
        client: no record of theirs is read before (the commit is served on the poller
        thread, which waits in the callback)."""
        await self._notes.load(partitions)
        self._committed.update(zip(partitions, starts, strict=True))
        assert self._listener is not None
        await self._listener.on_assigned(partitions)
        self._announced.update(partitions)
        await self._fresh.commit(partitions, self._committed, self.commit, self.label)

    async def revoked(self, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        try:
            await self._listener.on_revoked(partitions)
        finally:
            self._forget(partitions)

    async def lost(self, partitions: list[TopicPartition]) -> None:
        """Another member owns them already: forgotten first, so no commit of theirs is
        sent, then the listener abandons their batches."""
        self._forget(partitions)
        assert self._listener is not None
        await self._listener.on_lost(partitions)

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._committed.pop(tp, None)
            self._marks.pop(tp, None)
            self._announced.discard(tp)
            self._suspect.discard(tp)
        self._fresh.forget(partitions)
        self._notes.forget(partitions)
        # In order after any pause of theirs still queued (the bad batches are the poller's).
        self._calls.submit(self._bad.forget, list(partitions)).add_done_callback(said)

    def fail(self, doing: str, partitions: Sequence[TopicPartition], exc: BaseException) -> None:
        names = ",".join(map(self.label, partitions))
        self._failure = self._failure or SourceFailed(
            f"kafka: {doing} partitions {names} failed: {type(exc).__name__}: {exc}"
        )

    # -- delivering ------------------------------------------------------------------------
    async def fetch(self, timeout_s: float) -> Mapping[TopicPartition, Sequence[Any]]:
        if self._failure is not None:
            raise self._failure
        assert self._loop is not None
        # Within about `timeout_s`, as aiokafka's: the main loop sees a SIGTERM only
        # between fetches, and the poller can be held far longer (a commit waiting for
        # the coordinator in an outage: the shutdown did not even start before the
        # backstop ended the worker). The pending poll is collected by the next fetch,
        # so `consume()` still never runs ahead of the pipeline.
        if self._polling is None:
            self._polling = self._loop.run_in_executor(self._poller, self._poll, timeout_s)
        polling = self._polling
        if not polling.done():
            await asyncio.wait((polling,), timeout=timeout_s + POLL_GRACE_S)
            if not polling.done():
                return {}
        self._polling = None
        chunks, errors, marks, gaps, ends = polling.result()
        for tp, (position, oldest) in gaps.items():  # librdkafka reset them (`expiry`)
            self._expired.passed(self.label(tp), position, oldest)
        self._marks.update((tp, m) for tp, m in marks.items() if tp in self._announced)
        if errors or self._bad.held:
            self._suspect = set(self._announced)
        for error in errors:
            if error.fatal():
                raise SourceFailed(f"kafka: fatal client error: {error}")
            log.warning("event=fetch_error error=%r", str(error))
        if self._failure is not None:  # a callback inside this consume() failed
            raise self._failure
        announced = self._announced
        for tp in [tp for tp in chunks if tp not in announced]:
            chunks.pop(tp)  # not ours (any more): the next owner reads it from the commit
        if self._suspect:
            self._suspect.difference_update({**ends, **chunks})  # an end reached: consistent
        return chunks

    def _poll(self, timeout_s: float) -> tuple[Any, ...]:
        """On the poller thread: what is queued (`consume_queued`), as records by partition."""
        messages = consume_queued(self._consumer, self._config.fetch_max_records, timeout_s)
        hold = partial(self._bad.hold, self._consumer)  # `start` made the consumer
        chunks, errors, ends = by_partition(messages, self._topic, hold)
        gaps = self._continuity.after(chunks, ends)
        return chunks, errors, self._read_marks({**ends, **chunks}), gaps, ends

    def _read_marks(self, chunks: Mapping[TopicPartition, Any]) -> dict[Any, tuple[int, int]]:
        """On the poller thread: the cached high watermark and the fetch position of the
        partitions just fetched (of all announced ones every `MARKS_EVERY_S`). Never on
        the loop: `get_watermark_offsets` waits while another thread is inside consume(),
        and a rebalance callback there waits for the loop (a deadlock, seen)."""
        assert self._consumer is not None
        now = time.monotonic()
        every = now - self._marks_read >= MARKS_EVERY_S
        self._marks_read = now if every else self._marks_read
        tps = list(self._announced) if every else [tp for tp in chunks if tp in self._announced]
        return read_marks(self._consumer, tps, self._continuity.reached)

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        """librdkafka's pre-fetch queue is sized when the consumer is made (one queue for
        all partitions, `queued.max.messages.kbytes`, plus one fetch it may overshoot by):
        the share cannot move it, so this says what it holds."""
        held = queue_kbytes(self._config) * 1024 + self._config.max_partition_fetch_bytes
        log.info("event=fetch_limits partitions=%d queue_bytes=%d share_bytes=%d",
                 partitions, held, share_bytes)  # fmt: skip
        return held

    def pause(self, partition: TopicPartition) -> None:
        if self._consumer is not None and not self.closing and partition in self._announced:
            self._calls.submit(self._bad.pause, self._consumer, partition).add_done_callback(said)

    def resume(self, partition: TopicPartition) -> None:
        if self._consumer is not None and not self.closing and partition in self._announced:
            self._calls.submit(self._bad.resume, self._consumer, partition).add_done_callback(said)

    # -- committing ------------------------------------------------------------------------
    async def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Commit the handled positions of what is still ours; name the rest lost."""
        owned = self._announced
        offsets = {tp: next_to_read(pos) for tp, pos in positions.items() if tp in owned}
        gone = [tp for tp in positions if tp not in owned]
        if offsets:
            self._fresh.sent(offsets)
            await asyncio.wrap_future(self._calls.submit(self._commit_now, offsets, positions))
            self._notes.written(offsets)
            self._committed.update(offsets)
            self._fresh.landed(offsets)
        if gone:
            raise OwnershipLost(f"not assigned: {', '.join(map(self.label, gone))}", gone)

    def _commit_now(self, offsets: dict[TopicPartition, int], asked: Mapping[Any, int]) -> None:
        """On the poller thread: a synchronous commit (`commit_sync`)."""
        assert self._consumer is not None
        commit_sync(self._consumer, self._notes.with_notes(offsets), asked)

    def keep_notes(self) -> None:
        self._notes.keep()

    def remember(self, partition: TopicPartition, note: str) -> None:
        self._notes.remember(partition, note)

    def recall(self, partition: TopicPartition) -> str:
        return self._notes.recall(partition)

    async def flush_notes(self) -> None:
        """Changed notes at the committed positions, and the starts not known to be
        committed (as `KafkaSource.flush_notes`)."""
        unwritten = self._notes.unwritten()
        due = {tp: self._committed[tp] for tp in unwritten
               if tp in self._announced and tp in self._committed}  # fmt: skip
        owed = self._fresh.owed(self._announced)
        await owed_with(self._fresh, owed, due, self.commit, self.label)

    # -- reading state ---------------------------------------------------------------------
    def label(self, partition: TopicPartition) -> str:
        return f"{partition.topic}-{partition.partition}"

    def _end(self, partition: TopicPartition) -> int | None:
        """The high watermark of the last fetch response (read on the poller thread)."""
        mark = self._marks.get(partition) if partition in self._announced else None
        return mark[0] if mark is not None else None

    def lag(self, partition: TopicPartition) -> int | None:
        end, done = self._end(partition), self._committed.get(partition)
        if end is None or done is None:
            return None
        return max(end - done, 0)

    def read_through(self, partition: TopicPartition) -> int | None:
        """Past the markers librdkafka skipped: its position read with the records of that
        `consume()`, fed before the main loop asks (`markers`)."""
        mark = self._marks.get(partition) if partition in self._announced else None
        if mark is None or partition in self._suspect:
            return None
        return past_markers(mark[1], self._committed.get(partition), mark[0])

    def waiting(self, partition: TopicPartition) -> bool:
        """Records past the fetch position (not the commit: see `KafkaSource.waiting`)."""
        mark = self._marks.get(partition) if partition in self._announced else None
        if mark is None:
            return False
        end, position = mark
        readable = self._stable.readable_end(partition, end)
        if position < 0:  # nothing consumed since the assignment: against the commit
            done = self._committed.get(partition)
            return done is not None and readable > done
        return readable > position

    # -- stopping --------------------------------------------------------------------------
    async def stop_taking(self) -> None:
        """The group assigns partitions until the consumer leaves, in `stop`."""

    async def stop(self) -> None:
        """Leave the group: `close()` on the poller thread, after any `consume()` there."""
        try:
            if self._consumer is not None:
                assert self._loop is not None
                self.closing = True
                await self._loop.run_in_executor(self._poller, self._consumer.close)
        finally:
            if self._polling is not None:  # a poll a bounded fetch left: nothing handed over
                self._polling.add_done_callback(left_at_stop)
                self._polling = None
            self._poller.shutdown(wait=False)
            self._calls.close()
            await self._notes.close()
