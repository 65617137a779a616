"""Every Prometheus metric the worker exports, named and documented in one place.

Counters end in `_total`, durations are seconds, sizes are records or bytes.
Per-partition series carry `source` and `partition` labels; histograms carry
only `source`, so their series count does not grow with partitions. Updates
happen once per batch or per poll, never per record. A source adds the
families only it sees (`worker.sources.kinesis.metrics`) to the same registry.

Every per-partition family is made through `partition_gauge` or
`partition_counter`, so that when a partition leaves, all of its series go
with it, counters too: a stale `halted = 1` or lag on a pod that no longer owns
the partition would page someone, and a sum across pods during a rebalance
(what an autoscaler reads) would count the partition twice. A counter that
comes back with the partition starts from 0, which rate() reads as a reset.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from worker.observe.metrics_outputs import OutputMetrics
from worker.observe.tallies import SpreadFamily, TallyFamily
from worker.observe.view import RetryingBatch

# The `_created` series double the exposition and no dashboard reads them.
disable_created_metrics()

PARTITION_LABELS = ("source", "partition")
_P = PARTITION_LABELS
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Why a batch was cut from a partition's buffer: full by count or bytes, its window
#: ended, buffer pressure wanted its memory early (`Batcher.reason`); or its records were
#: dropped uninvoked at a revoke or shutdown, to be read again by the next owner.
CUT_REASONS = ("size", "bytes", "window", "pressure", "revoke", "shutdown")
_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._per_partition: list[TallyFamily | Gauge] = []
        #: The partitions' metrics now owned, by source (`worker_inflight_batches` sums them).
        self._owned: dict[str, set[PartitionMetrics]] = {}
        self.records_polled = self.partition_counter(
            "worker_records_polled",
            "Records read from the source.",
        )
        self.records_filtered = self.partition_counter(
            "worker_records_filtered",
            "Records that matched no filter pattern: committed, never invoked.",
        )
        self.records_invoked = self.partition_counter(
            "worker_records_invoked",
            "Records passed to the handler; counted again on every retry.",
        )
        self.records_failed = self.partition_counter(
            "worker_records_failed",
            "Records in invocations that failed (error, timeout or reported item failure).",
        )
        self.records_committed = self.partition_counter(
            "worker_records_committed",
            "Records whose position was checkpointed at the source.",
        )
        self.batches = self.partition_counter(
            "worker_batches",
            "Handler invocations by outcome: success, partial (item failures), error, timeout.",
            "outcome",
        )
        self.batches_cut = self.partition_counter(
            "worker_batches_cut",
            "Batches cut from a partition's buffer, by reason: size, bytes (full), window "
            "(its window ended), pressure (cut early: the memory budget or the partition's "
            "buffer limit was reached), revoke, shutdown (dropped uninvoked, read again).",
            "reason",
        )
        self.records_dead_lettered = self.partition_counter(
            "worker_records_dead_lettered",
            "Records the on-failure destination acknowledged (retries or age exhausted).",
        )
        self.records_dropped = self.partition_counter(
            "worker_records_dropped",
            "Records given up with no destination configured, by reason.",
            "reason",
        )
        self.bisections = self.partition_counter(
            "worker_bisections",
            "Failed batches split in two to isolate a failing record.",
        )
        self.destination_failures = Counter(
            "worker_destination_delivery_failures",
            "Writes to the on-failure destination that failed (they are retried).",
            ("source", "destination"),
            registry=r,
        )
        self.dead_letter_truncated = Counter(
            "worker_dead_letter_truncated",
            "Records over the destination's size limit, written as a truncated envelope.",
            ("destination",),
            registry=r,
        )
        self.retries = self.partition_counter(
            "worker_retries",
            "Invocations that were retries of a failed batch.",
        )
        # Observed per batch: plain numbers, read when scraped (`tallies`).
        self.handler_duration = SpreadFamily(
            "worker_handler_duration_seconds",
            "Time the handler took per invocation.",
            ("source",),
            registry=r,
            buckets=_DURATION_BUCKETS,
        )
        self.batch_size = SpreadFamily(
            "worker_batch_size_records",
            "Records per invocation.",
            ("source",),
            registry=r,
            buckets=_SIZE_BUCKETS,
        )
        self.iterator_age = self.partition_gauge(
            "worker_iterator_age_seconds",
            "Age of the last record of the last invoked batch, from its timestamp to the invoke.",
        )
        self.offset_lag = self.partition_gauge(
            "worker_offset_lag_records",
            "Records between the last checkpoint and the end of the partition.",
        )
        self.committed_position = self.partition_gauge(
            "worker_committed_position",
            "Last position checkpointed (Kafka: the next offset to read).",
        )
        self.last_commit = self.partition_gauge(
            "worker_last_commit_timestamp_seconds",
            "When this worker last checkpointed the partition (or took it): the commit age is "
            "time() minus this.",
        )
        self.buffered_records = self.partition_gauge(
            "worker_buffered_records",
            "Records fetched and waiting for the handler.",
        )
        self.buffered_bytes = Gauge(
            "worker_buffered_bytes",
            "Estimated memory of all fetched, waiting records (values plus per-record overhead).",
            ("source",),
            registry=r,
        )
        self.memory_bytes = Gauge(
            "worker_memory_bytes",
            "The memory budget's parts: `pipeline_buffers` (estimated memory of buffered "
            "records), `client_prefetch` (the most the client may hold fetched ahead).",
            ("source", "part"),
            registry=r,
        )
        self.halted = self.partition_gauge(
            "worker_partition_halted",
            "1 when the dead-letter guard stopped the partition (see errors.max_dead_letter_*).",
        )
        self.retrying = self.partition_gauge(
            "worker_partition_retrying",
            "1 while a failed batch of the partition waits for another attempt: nothing past "
            "it is committed until it succeeds or is given up.",
        )
        self.retry_attempts = self.partition_gauge(
            "worker_partition_retry_attempts",
            "Failed attempts so far of the batch the partition is retrying (0 when none).",
        )
        self.paused = self.partition_gauge(
            "worker_partition_paused",
            "1 while the partition is paused because its buffer is full.",
        )
        self.window_early_records = self.partition_counter(
            "worker_window_early_records",
            "Records stamped more than a window width ahead of the wall clock: tumbling "
            "windows place them by the wall clock instead (they are not lost).",
        )
        self.handler_overruns = self.partition_counter(
            "worker_handler_overruns",
            "Handler calls still running past handler.timeout_s (threads cannot be stopped): "
            "the partition waits for each to return before its next call.",
        )
        self.handler_overrunning = Gauge(
            "worker_handler_overrunning_calls",
            "Handler calls running past their timeout now.",
            ("source",),
            registry=r,
        )
        self.inflight_batches = Gauge(
            "worker_inflight_batches", "Batches being handled now.", ("source",), registry=r
        )
        self.assigned_partitions = Gauge(
            "worker_assigned_partitions", "Partitions owned now.", ("source",), registry=r
        )
        self.rebalances = Counter(
            "worker_rebalances",
            "Assignment changes (revokes and assigns).",
            ("source",),
            registry=r,
        )
        self.commit_failures = Counter(
            "worker_commit_failures",
            "Checkpoint attempts that failed (they are retried).",
            ("source",),
            registry=r,
        )
        self.commits_refused = Counter(
            "worker_commits_refused",
            "Partition checkpoints the source refused: this worker no longer owned them.",
            ("source",),
            registry=r,
        )
        # The one per-partition family kept when the partition leaves: it counts the
        # leaving itself, so it is only ever read after the partition has gone.
        self.revoke_blocked = Counter(
            "worker_revoke_blocked",
            "Revoked partitions held past runtime.rebalance_timeout_s because a handler call "
            "of theirs still ran (a thread cannot be stopped): not released until it returned.",
            _P,
            registry=r,
        )
        # RSS, CPU and open files of the worker process, and the Python version.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.loop_lag = Histogram(
            "worker_event_loop_lag_seconds",
            "How late the event loop ran a 250 ms timer (a blocked loop delays heartbeats).",
            ("source",),
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.poll_errors = Counter(
            "worker_poll_errors", "Fetches from the source that raised.", ("source",), registry=r
        )
        self.outputs = OutputMetrics(r)

    def partition_gauge(self, name: str, documentation: str) -> Gauge:
        """A gauge labelled by source and partition, removed when the partition leaves."""
        gauge = Gauge(name, documentation, PARTITION_LABELS, registry=self.registry)
        self._per_partition.append(gauge)
        return gauge

    def owned(self, partition: PartitionMetrics) -> None:
        """A partition's metrics came into use: its batches in flight count in the source's
        gauge, read when scraped (an inc and a dec per batch would each take a lock)."""
        source = partition.source
        if source not in self._owned:
            owned = self._owned[source] = set()
            gauge = self.inflight_batches.labels(source)
            gauge.set_function(lambda: sum(p.inflight for p in owned))
        self._owned[source].add(partition)

    def disowned(self, partition: PartitionMetrics) -> None:
        self._owned.get(partition.source, set()).discard(partition)

    def partition_counter(self, name: str, documentation: str, *extra: str) -> TallyFamily:
        """A counter labelled by source, partition and `extra`, removed when the partition
        leaves (every series of it, whatever the `extra` labels). Updated per batch, so its
        series are plain numbers read when scraped (`tallies`)."""
        counter = TallyFamily(name, documentation, (*PARTITION_LABELS, *extra), self.registry)
        self._per_partition.append(counter)
        return counter

    def forget_partition(self, source: str, partition: str) -> None:
        """Remove every per-partition series of a partition this worker no longer owns."""
        labels = {"source": source, "partition": partition}
        for family in self._per_partition:
            family.remove_by_labels(labels)


class PartitionMetrics:
    """The labelled children of one partition, looked up once per assignment.

    `.labels()` costs a dict lookup under a lock; doing it once here keeps the
    per-batch updates to a plain `inc`/`set`. The few numbers the status view
    shows are kept here as plain values too, written by the methods below, so
    that observation never reads Prometheus back.
    """

    __slots__ = (
        "_committed",
        "_dead_lettered",
        "_metrics",
        "_retry_attempts",
        "_retrying",
        "bisections",
        "buffered",
        "committed_position",
        "committed_records",
        "cuts",
        "dead_lettered_records",
        "error",
        "failed",
        "filtered",
        "halted",
        "inflight",
        "invoked",
        "iterator_age_s",
        "lag",
        "last_commit",
        "partial",
        "partition",
        "paused",
        "polled",
        "retries",
        "retrying",
        "source",
        "success",
        "timeout",
        "window_early",
    )

    def __init__(self, metrics: Metrics, source: str, partition: str) -> None:
        self._metrics = metrics
        self.source = source
        self.partition = partition
        labels = (source, partition)
        self.polled = metrics.records_polled.labels(*labels)
        self.invoked = metrics.records_invoked.labels(*labels)
        self.filtered = metrics.records_filtered.labels(*labels)
        self.failed = metrics.records_failed.labels(*labels)
        self._committed = metrics.records_committed.labels(*labels)
        self.retries = metrics.retries.labels(*labels)
        self.bisections = metrics.bisections.labels(*labels)
        self._dead_lettered = metrics.records_dead_lettered.labels(*labels)
        self.partial = metrics.batches.labels(*labels, "partial")
        self.success = metrics.batches.labels(*labels, "success")
        self.error = metrics.batches.labels(*labels, "error")
        self.timeout = metrics.batches.labels(*labels, "timeout")
        self.cuts = {reason: metrics.batches_cut.labels(*labels, reason) for reason in CUT_REASONS}
        # Read when scraped, not written per batch: a gauge's set takes a lock.
        metrics.iterator_age.labels(*labels).set_function(lambda: self.iterator_age_s)
        self.lag = metrics.offset_lag.labels(*labels)
        self.committed_position = metrics.committed_position.labels(*labels)
        self.buffered = metrics.buffered_records.labels(*labels)
        self.paused = metrics.paused.labels(*labels)
        self.halted = metrics.halted.labels(*labels)
        self.window_early = metrics.window_early_records.labels(*labels)
        self.last_commit = metrics.last_commit.labels(*labels)
        self.last_commit.set(time.time())  # taken now: the age counts from here
        self.committed_records = 0
        self.dead_lettered_records = 0
        self.iterator_age_s = 0.0
        self.inflight = 0
        self._retrying = metrics.retrying.labels(*labels)
        self._retry_attempts = metrics.retry_attempts.labels(*labels)
        self._retrying.set(0)
        self._retry_attempts.set(0)
        #: The batches being retried now, by the token of the call retrying each.
        self.retrying: dict[int, RetryingBatch] = {}
        metrics.owned(self)

    def records_committed(self, count: int, shown_position: int) -> None:
        self.committed_records += count
        self._committed.inc(count)
        self.committed_position.set(shown_position)
        self.last_commit.set(time.time())

    def records_dead_lettered(self, count: int) -> None:
        self.dead_lettered_records += count
        self._dead_lettered.inc(count)

    def iterator_age(self, age_s: float) -> None:
        self.iterator_age_s = age_s

    def retrying_now(self, token: int, batch: RetryingBatch) -> None:
        """A failed batch waits for its next attempt (called once per failure, never on
        success)."""
        self.retrying[token] = batch
        self._retrying.set(1)
        self._retry_attempts.set(max(b.attempts for b in self.retrying.values()))

    def retry_over(self, token: int) -> None:
        """The batch `token` was retrying succeeded, was given up, or was abandoned."""
        if self.retrying.pop(token, None) is None:
            return
        self._retrying.set(1 if self.retrying else 0)
        self._retry_attempts.set(max((b.attempts for b in self.retrying.values()), default=0))

    def batch_started(self) -> None:
        self.inflight += 1

    def batch_ended(self) -> None:
        self.inflight -= 1

    def forget(self) -> None:
        """Drop the partition's gauges once it is no longer owned, so stale values vanish."""
        self._metrics.disowned(self)
        self._metrics.forget_partition(self.source, self.partition)
