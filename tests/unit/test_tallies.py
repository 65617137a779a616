"""The per-batch families expose exactly what prometheus_client's own would.

Each test drives a real `Counter` / `Histogram` and a tally family with the same
updates and compares the whole text exposition, so a dashboard or a recording rule
cannot tell which one the worker used.
"""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from worker.observe import metrics  # noqa: F401  (as the worker runs: no `_created` series)
from worker.observe.tallies import SpreadFamily, TallyFamily

BUCKETS = (0.001, 0.01, 0.1, 1, 2.5, 10)


def test_a_tally_family_exposes_what_a_counter_would():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = TallyFamily("w_things", "Things seen.", ("source", "partition"), ours)
    counter = Counter("w_things", "Things seen.", ("source", "partition"), registry=theirs)
    rng = random.Random(7)
    for _ in range(500):
        labels = ("kafka", f"t-{rng.randrange(5)}")
        amount = rng.choice([1, 3, 10, 0.5])
        tally.labels(*labels).inc(amount)
        counter.labels(*labels).inc(amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_a_spread_family_exposes_what_a_histogram_would():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    spread = SpreadFamily("w_seconds", "Time taken.", ("source",), ours, buckets=BUCKETS)
    histogram = Histogram("w_seconds", "Time taken.", ("source",), buckets=BUCKETS,
                          registry=theirs)  # fmt: skip
    rng = random.Random(11)
    values = [*BUCKETS, 0.0, 100.0] + [rng.uniform(0, 12) for _ in range(500)]  # bounds too
    for v in values:
        source = rng.choice(["kafka", "kinesis"])
        spread.labels(source).observe(v)
        histogram.labels(source).observe(v)
    assert generate_latest(ours) == generate_latest(theirs)


def test_removing_a_partition_removes_every_series_of_it_and_only_those():
    registry = CollectorRegistry()
    cuts = TallyFamily("w_cut", "Cuts.", ("source", "partition", "reason"), registry)
    for partition in ("t-0", "t-1"):
        for reason in ("size", "window"):
            cuts.labels("kafka", partition, reason).inc()
    cuts.remove_by_labels({"source": "kafka", "partition": "t-0"})
    text = generate_latest(registry).decode()
    assert 'partition="t-0"' not in text
    assert text.count('partition="t-1"') == 2
    assert cuts.labels("kafka", "t-0", "size").value == 0  # comes back from 0, a reset


def test_a_family_refuses_the_wrong_labels_and_a_taken_name():
    registry = CollectorRegistry()
    tally = TallyFamily("w_x", "X.", ("source", "partition"), registry)
    with pytest.raises(ValueError, match="expected labels"):
        tally.labels("kafka")
    with pytest.raises(ValueError):
        Counter("w_x", "Again.", ("source",), registry=registry)
    with pytest.raises(ValueError, match="ascending"):
        SpreadFamily("w_y", "Y.", ("source",), registry, buckets=(1, 1, 2))
