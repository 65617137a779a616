"""The metric families only the Kinesis source sees: leases, GetRecords, checkpoints, time behind.

Registered on the worker's registry when the source is attached, so a Kafka
worker exports none of them. `behind_latest` is a per-partition gauge of the
core's kind: it and `get_records` go with the shard's other series when the shard leaves.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from worker.observe.metrics import Metrics


class KinesisMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.leases_held = Gauge(
            "worker_leases_held", "Kinesis shard leases this worker holds.", ("source",), registry=r
        )
        self.lease_events = Counter(
            "worker_lease_events",
            "Lease changes: taken (free), expired (taken over), asked (a hand-off, for "
            "balance), handed_off (to the worker that asked), ask_expired (released "
            "instead: the asker stopped confirming), stolen (by hand-off or, when "
            "overdue, by force), reclaimed (the table named this worker, which did not hold "
            "it), lost, lapsed (not renewed in time: the worker stops), ended.",
            ("source", "event"),
            registry=r,
        )
        self.behind_latest = metrics.partition_gauge(
            "worker_behind_latest_seconds",
            "Kinesis MillisBehindLatest of the last GetRecords, as seconds, per shard.",
        )
        self.get_records = metrics.partition_counter(
            "worker_get_records_calls",
            "Kinesis GetRecords calls, by result: ok, throttled, expired_iterator, error "
            "(retried: a 500, a network failure), failed (not retryable: the worker stops), "
            "trimmed (records past the checkpoint expired unread: lost, read on from the oldest).",
            "result",
        )
        self.checkpoints = Counter(
            "worker_checkpoint_writes",
            "Checkpoint writes to the lease table, by result: ok, conditional_failure, error.",
            ("source", "result"),
            registry=r,
        )
        self.renewals = Counter(
            "worker_lease_renewals",
            "Lease renewal attempts, by result: ok, error (retried until the lease would lapse).",
            ("source", "result"),
            registry=r,
        )
