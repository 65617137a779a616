"""Every Prometheus metric the worker exports, named and documented in one place.

Counters end in `_total`, durations are seconds, sizes are records or bytes.
Per-partition series carry `source` and `partition` labels; histograms carry
only `source`, so their series count does not grow with partitions. Updates
happen once per batch or per poll, never per record.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# The `_created` series double the exposition and no dashboard reads them.
disable_created_metrics()

_P = ("source", "partition")
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.records_polled = Counter(
            "worker_records_polled", "Records read from the source.", _P, registry=r
        )
        self.records_filtered = Counter(
            "worker_records_filtered",
            "Records that matched no filter pattern: committed, never invoked.",
            _P,
            registry=r,
        )
        self.records_invoked = Counter(
            "worker_records_invoked",
            "Records passed to the handler; counted again on every retry.",
            _P,
            registry=r,
        )
        self.records_failed = Counter(
            "worker_records_failed",
            "Records in invocations that failed (error, timeout or reported item failure).",
            _P,
            registry=r,
        )
        self.records_committed = Counter(
            "worker_records_committed",
            "Records whose position was checkpointed at the source.",
            _P,
            registry=r,
        )
        self.batches = Counter(
            "worker_batches",
            "Handler invocations by outcome: success, partial (item failures), error, timeout.",
            (*_P, "outcome"),
            registry=r,
        )
        self.records_dead_lettered = Counter(
            "worker_records_dead_lettered",
            "Records the on-failure destination acknowledged (retries or age exhausted).",
            _P,
            registry=r,
        )
        self.records_dropped = Counter(
            "worker_records_dropped",
            "Records given up with no destination configured, by reason.",
            (*_P, "reason"),
            registry=r,
        )
        self.bisections = Counter(
            "worker_bisections",
            "Failed batches split in two to isolate a failing record.",
            _P,
            registry=r,
        )
        self.destination_failures = Counter(
            "worker_destination_delivery_failures",
            "Writes to the on-failure destination that failed (they are retried).",
            ("source", "destination"),
            registry=r,
        )
        self.retries = Counter(
            "worker_retries", "Invocations that were retries of a failed batch.", _P, registry=r
        )
        self.handler_duration = Histogram(
            "worker_handler_duration_seconds",
            "Time the handler took per invocation.",
            ("source",),
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "worker_batch_size_records",
            "Records per invocation.",
            ("source",),
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.iterator_age = Gauge(
            "worker_iterator_age_seconds",
            "Age of the last record of the last invoked batch, from its timestamp to the invoke.",
            _P,
            registry=r,
        )
        self.offset_lag = Gauge(
            "worker_offset_lag_records",
            "Records between the last checkpoint and the end of the partition.",
            _P,
            registry=r,
        )
        self.committed_position = Gauge(
            "worker_committed_position",
            "Last position checkpointed (Kafka: the next offset to read).",
            _P,
            registry=r,
        )
        self.buffered_records = Gauge(
            "worker_buffered_records",
            "Records fetched and waiting for the handler.",
            _P,
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "worker_buffered_bytes",
            "Estimated memory of all fetched, waiting records (values plus per-record overhead).",
            ("source",),
            registry=r,
        )
        self.halted = Gauge(
            "worker_partition_halted",
            "1 when the dead-letter guard stopped the partition (see errors.max_dead_letter_*).",
            _P,
            registry=r,
        )
        self.paused = Gauge(
            "worker_partition_paused",
            "1 while the partition is paused because its buffer is full.",
            _P,
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
        # RSS, CPU and open files of the worker process, and the Python version.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.leases_held = Gauge(
            "worker_leases_held", "Kinesis shard leases this worker holds.", ("source",), registry=r
        )
        self.lease_events = Counter(
            "worker_lease_events",
            "Lease changes: taken (free), expired (taken over), stolen (balance), lost, ended.",
            ("source", "event"),
            registry=r,
        )
        self.behind_latest = Gauge(
            "worker_behind_latest_seconds",
            "Kinesis MillisBehindLatest of the last GetRecords, as seconds, per shard.",
            _P,
            registry=r,
        )
        self.get_records = Counter(
            "worker_get_records_calls",
            "Kinesis GetRecords calls, by result: ok, throttled, expired_iterator.",
            ("source", "partition", "result"),
            registry=r,
        )
        self.checkpoints = Counter(
            "worker_checkpoint_writes",
            "Checkpoint writes to the lease table, by result: ok, conditional_failure.",
            ("source", "result"),
            registry=r,
        )
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


class PartitionMetrics:
    """The labelled children of one partition, looked up once per assignment.

    `.labels()` costs a dict lookup under a lock; doing it once here keeps the
    per-batch updates to a plain `inc`/`set`.
    """

    __slots__ = (
        "bisections",
        "buffered",
        "committed",
        "committed_position",
        "dead_lettered",
        "error",
        "failed",
        "filtered",
        "halted",
        "invoked",
        "iterator_age",
        "lag",
        "partial",
        "partition",
        "paused",
        "polled",
        "retries",
        "source",
        "success",
        "timeout",
    )

    def __init__(self, metrics: Metrics, source: str, partition: str) -> None:
        self.source = source
        self.partition = partition
        labels = (source, partition)
        self.polled = metrics.records_polled.labels(*labels)
        self.invoked = metrics.records_invoked.labels(*labels)
        self.filtered = metrics.records_filtered.labels(*labels)
        self.failed = metrics.records_failed.labels(*labels)
        self.committed = metrics.records_committed.labels(*labels)
        self.retries = metrics.retries.labels(*labels)
        self.bisections = metrics.bisections.labels(*labels)
        self.dead_lettered = metrics.records_dead_lettered.labels(*labels)
        self.partial = metrics.batches.labels(*labels, "partial")
        self.success = metrics.batches.labels(*labels, "success")
        self.error = metrics.batches.labels(*labels, "error")
        self.timeout = metrics.batches.labels(*labels, "timeout")
        self.iterator_age = metrics.iterator_age.labels(*labels)
        self.lag = metrics.offset_lag.labels(*labels)
        self.committed_position = metrics.committed_position.labels(*labels)
        self.buffered = metrics.buffered_records.labels(*labels)
        self.paused = metrics.paused.labels(*labels)
        self.halted = metrics.halted.labels(*labels)

    def forget(self, metrics: Metrics) -> None:
        """Drop the partition's gauges once it is no longer owned, so stale values vanish."""
        labels = (self.source, self.partition)
        for gauge in (
            metrics.iterator_age,
            metrics.offset_lag,
            metrics.committed_position,
            metrics.buffered_records,
            metrics.paused,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
