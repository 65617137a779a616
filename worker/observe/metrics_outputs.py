"""The metric families of what a handler does beyond its result: its outputs to Kafka
topics and the worker-wide cap on its calls. Part of `Metrics` (defined here to keep
that module one screenful per concern)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)


class OutputMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.slot_wait = Histogram(
            "worker_handler_slot_wait_seconds",
            "Time a batch waited for a handler.max_concurrency slot before its call started "
            "(backpressure, not handler time; observed only when it had to wait).",
            ("source",),
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.sent = Counter(
            "worker_output_records_sent",
            "Output records (batch.send) the broker acknowledged, by topic.",
            ("source", "topic"),
            registry=r,
        )
        self.discarded = Counter(
            "worker_output_records_discarded",
            "Output records not sent because their invoke failed (raised, timed out, bisected "
            "away) or their input records were dead-lettered or dropped.",
            ("source",),
            registry=r,
        )
        self.produce_errors = Counter(
            "worker_output_produce_errors",
            "Produce requests for outputs that failed (the batch is retried from its input).",
            ("source",),
            registry=r,
        )
        self.transactions = Counter(
            "worker_output_transactions",
            "Kafka transactions of outputs and offsets (exactly_once), by outcome.",
            ("source", "outcome"),
            registry=r,
        )
