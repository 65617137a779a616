"""Scaling out on the real broker: what an autoscaler and a rollout read stays true.

Three `worker run` processes of one group join one after another on a topic of
two partitions. Each time partitions move, the worker that lost one is scraped:
no series of any family may name it any more (counters included), or a sum
across pods, which is what KEDA's prometheus trigger and dashboards read,
counts the partition twice. The third worker gets no partition and must still
be ready, or a rollout with more pods than partitions never finishes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    scrape,
    unique,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
PARTITIONS = 2
RECORDS = 200


def owned(worker: WorkerProcess) -> set[str]:
    """The partitions the worker's status says it owns (not read from its metrics)."""
    url = f"http://127.0.0.1:{worker.metrics_port}/status.json"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return {p["partition"] for p in json.load(answer)["partitions"]}


def ready(worker: WorkerProcess) -> bool:
    try:
        url = f"http://127.0.0.1:{worker.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except urllib.error.HTTPError:
        return False


def series_by_partition(worker: WorkerProcess) -> dict[str, set[str]]:
    """partition label -> the names of the samples that carry it."""
    out: dict[str, set[str]] = {}
    for name, labels in scrape(worker.metrics_port):
        partition = dict(labels).get("partition")
        if partition is not None:
            out.setdefault(partition, set()).add(name)
    return out


def settled(workers: list[WorkerProcess]) -> bool:
    """Every partition owned by exactly one worker, and every worker ready."""
    owners = [owned(w) for w in workers]
    every = [p for o in owners for p in o]
    return len(every) == len(set(every)) == PARTITIONS and all(map(ready, workers))


def test_a_partition_that_moves_leaves_no_series_behind_and_an_idle_pod_is_ready(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, RECORDS, PARTITIONS)
    group = unique("scale-out")
    config = write_config(
        tmp_path / "worker.toml", kafka, topic, group,
        errors={"maximum_retry_attempts": 0, "retry_backoff_ms": [10, 50]},
    )  # fmt: skip
    # One poison record a partition, given up with no destination: `records_dropped` and
    # `records_failed` get series for every partition too, not only the common ones.
    env = {"RECORD_POISON": ",".join(f"{p}:3" for p in range(PARTITIONS))}
    workers: list[WorkerProcess] = []
    try:
        first = WorkerProcess(config, tmp_path, env)
        workers.append(first)
        eventually(lambda: committed(kafka, group, topic) == ends, 60, "all committed")
        before = series_by_partition(first)
        labels = {f"{topic}-{p}" for p in range(PARTITIONS)}
        assert set(before) == labels
        for names in before.values():  # gauges and counters of every kind
            assert {"worker_records_polled_total", "worker_records_dropped_total",
                    "worker_batches_total", "worker_offset_lag_records"} <= names  # fmt: skip

        for joining in range(2):  # the second worker takes one; the third gets none
            was = {id(w): owned(w) for w in workers}
            workers.append(WorkerProcess(config, tmp_path, env))
            eventually(lambda: settled(workers), 60, f"{len(workers)} workers settled")
            for w in workers[:-1]:
                lost = was[id(w)] - owned(w)
                left = series_by_partition(w)
                assert not lost & set(left), f"series of a lost partition: {left}"
                assert set(left) == owned(w)  # the kept ones still report
            if joining == 0:
                assert any(was[id(w)] - owned(w) for w in workers[:-1]), "nothing moved"
        idle = [w for w in workers if not owned(w)]
        assert len(idle) == 1 and ready(idle[0])
        assert series_by_partition(idle[0]) == {}
    finally:
        for w in workers:
            w.stop()
