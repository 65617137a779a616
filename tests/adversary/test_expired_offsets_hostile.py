"""Attacks on reading past a deleted checkpoint (`worker.sources.kafka.expiry`), on the
real broker, both clients. Faults at the boundary: `DeleteRecords` through aiokafka's
admin client, the recording handler's hold (a batch inside the handler while the log is
cut), the worker's own buffer limit pausing the partition."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.expiry_helpers import (
    delete_to,
    expired_lines,
    expired_metric,
    produce,
    uncovered,
)
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    read_gate,
    read_handled,
    scrape,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka


def paused(port: int, topic: str, partition: int) -> bool:
    return any(name == "worker_partition_paused" and value == 1
               and dict(labels).get("partition") == f"{topic}-{partition}"
               for (name, labels), value in scrape(port).items())  # fmt: skip


@pytest.mark.parametrize("lanes", [1, 4])
def test_the_log_cut_while_a_batch_is_held_and_the_partition_paused(
    kafka: str, kafka_client: str, tmp_path: Path, lanes: int
):
    """Mid-run: partition 0's batch at offset 20 is inside the handler, the worker's buffer
    limit pauses the partition with records buffered, and the log is cut far past what
    it fetched. Every offset is handled or counted; the end is committed; partition 1
    goes on untouched."""
    topic, group = unique("cut"), unique("g")
    records, cut = 3000, 2000

    async def setup() -> None:
        await create_topic(kafka, topic, 2)
        await produce(kafka, topic, records, 2, size=100)

    asyncio.run(setup())
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"starting_position": "trim_horizon", "max_partition_fetch_bytes": 4096,
                "fetch_max_records": 50},
        batching={"batch_size": 10, "maximum_batching_window_ms": 10},
        handler={"target": "recording_handler:handle", "timeout_s": 60,
                 "parallelization_factor": lanes},
        runtime={"max_buffered_records": 60},
    )  # fmt: skip
    env = {"RECORD_HOLD": "0:20", "RECORD_GATE": str(gate)}
    worker = WorkerProcess(config, tmp_path, extra_env=env)
    try:
        eventually(lambda: read_gate(gate), timeout_s=30, what="batch at 20 held")
        port = worker.metrics_port
        eventually(lambda: paused(port, topic, 0), timeout_s=20, what="partition 0 paused")
        asyncio.run(delete_to(kafka, topic, {0: cut}))
        (gate / "release").touch()
        ends = {0: records, 1: records}
        eventually(lambda: committed(kafka, group, topic) == ends, timeout_s=40,
                   what="committed to the end")  # fmt: skip
        handled = read_handled(tmp_path)
        lines = expired_lines(worker.log(), topic)
        assert uncovered(handled, lines, {0: 0, 1: 0}, ends) == {}
        assert [p for p, *_ in lines] == [0], lines
        ((_, position, oldest, lost),) = lines
        assert oldest == cut and 20 < position < cut, lines
        assert expired_metric(port, topic) == {0: lost}
        assert lost == cut - position
        assert set(handled[0]) >= set(range(cut, records))
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
