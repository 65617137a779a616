"""handler.max_concurrency on the real broker: 8 partitions, 2 key lanes each, a cap of 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    read_handled,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


def test_eight_partitions_never_run_more_than_two_calls_at_once_and_lose_nothing(
    kafka: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, 4000, 8, by_key_number=True)
    group = unique("g")
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"target": "concurrency_handler:handle", "max_concurrency": 2,
                 "parallelization_factor": 2},
        batching={"batch_size": 20, "maximum_batching_window_ms": 20},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: committed(kafka, group, topic) == ends, what="all committed")
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
    seen = [int(n) for n in (tmp_path / f"concurrency.{worker.pid}").read_text().split()]
    assert max(seen) == 2, f"at most 2 calls at once, and the cap was reached: {max(seen)}"
    handled = read_handled(tmp_path, worker.pid)
    for p, end in ends.items():
        assert sorted(set(handled[p])) == list(range(end)), f"partition {p} lost records"
