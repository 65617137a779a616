"""outputs.exactly_once on the real broker: kill -9 the worker twice mid-run, restart, and
the output topic read with read_committed holds every input's output exactly once.

Faults at the boundary: the first worker's handler sends one output larger than the
output topic's `max.message.bytes`, so the broker refuses it and every transaction of
that partition fails after its other outputs reached the log (aborted, so invisible to
read_committed: an at-least-once sink would leave them there as duplicates); it is
killed (SIGKILL) while those transactions keep failing. The second worker (ordinary
outputs) is killed unaimed but provably mid-run: once it has handled part of the
backlog and the topic is not committed to its end. A killed worker's open transactions
are aborted when the next one takes its partitions (same transactional ids: the fence).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    read_handled,
    scrape,
    unique,
    write_config,
)
from tests.integration.output_helpers import create_output_topic, expected_outputs, outputs_seen
from tests.integration.test_kafka_crash import finish_with_a_new_worker

pytestmark = pytest.mark.kafka
PARTITIONS = 4


def aborted(worker: WorkerProcess) -> float:
    key = ("worker_output_transactions_total", (("outcome", "aborted"), ("source", "kafka")))
    return scrape(worker.metrics_port).get(key, 0)


def _handled(tmp_path: Path, pid: int) -> int:
    return sum(len(v) for v in read_handled(tmp_path, pid).values())


def run_killed_twice(kafka: str, tmp_path: Path, records: int, lanes: int) -> None:
    topic, ends = keyed_topic(kafka, records, PARTITIONS, by_key_number=True)
    out, group = unique("out"), unique("g")
    asyncio.run(create_output_topic(kafka, out, 2, max_message_bytes=600_000))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"target": "output_handler:handle", "parallelization_factor": lanes},
        outputs={"topics": [out], "exactly_once": True},
        source={"commit_interval_ms": 200},
    )  # fmt: skip
    env = {"OUTPUT_TOPIC": out, "RECORD_SLEEP_S": "0.01"}
    huge = {**env, "OUTPUT_HUGE": f"0:{ends[0] // 3}"}
    first = WorkerProcess(config, tmp_path, huge)
    try:
        eventually(lambda: aborted(first) >= 3, what="transactions failing on the huge output")
        assert committed(kafka, group, topic).get(0, 0) <= ends[0] // 3
        first.kill9()
        first.wait()
    finally:
        first.stop()
    for kill in range(1, 2):
        worker = WorkerProcess(config, tmp_path, env)
        try:
            # Mid-run: this worker has handled a share of the backlog, not all of it.
            eventually(lambda w=worker: _handled(tmp_path, w.pid) >= records // 6,
                       what=f"worker {kill + 1} handling")  # fmt: skip
            assert committed(kafka, group, topic) != ends, "the run ended before the kill"
            worker.kill9()
            worker.wait()
        finally:
            worker.stop()
    finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)
    assert committed(kafka, group, topic) == ends
    seen = outputs_seen(kafka, out, isolation_level="read_committed")
    assert set(seen) == expected_outputs(ends), "an output is missing"
    assert max(seen.values()) == 1, "an output is there twice"
    every = outputs_seen(kafka, out)  # aborted transactions' records too
    in_aborted = sum(every.values()) - sum(seen.values())
    print(f"lanes={lanes} outputs={len(seen)} in aborted transactions={in_aborted}")
    assert in_aborted > 0, "no aborted output reached the log: the test proved nothing"


def test_exactly_once_outputs_survive_two_kill_9s(kafka: str, tmp_path: Path):
    run_killed_twice(kafka, tmp_path, 20_000, lanes=1)


def test_exactly_once_outputs_survive_two_kill_9s_with_four_key_lanes_bounded(
    kafka: str, tmp_path: Path
):
    """CI's bounded version of the next test: the same kills, 4,000 inputs."""
    run_killed_twice(kafka, tmp_path, 4_000, lanes=4)


@pytest.mark.long
@pytest.mark.skipif(not os.environ.get("STREAMWORKER_LONG"), reason="long: STREAMWORKER_LONG=1")
def test_exactly_once_outputs_survive_two_kill_9s_with_four_key_lanes(kafka: str, tmp_path: Path):
    run_killed_twice(kafka, tmp_path, 20_000, lanes=4)
