"""Records cross to handler processes on both Kafka clients, on the real broker.

librdkafka's records wrap the client's messages (`librdkafka_records`), which cannot be
pickled: a batch crosses as the columns of `record.pack` and arrives as aiokafka
`ConsumerRecord`s. This runs the recording handler in two handler processes and checks
that every record arrived once, in order, with its key, and that everything was committed.
"""

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


def test_process_concurrency_hands_every_record_to_the_handler_processes(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, 3_000, 2)
    group = unique("g")
    config = write_config(tmp_path / "w.toml", kafka, topic, group,
                          handler={"concurrency": "process", "processes": 2})  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: committed(kafka, group, topic) == ends, what="all committed")
        files = sorted(tmp_path.glob("handled.*"))  # one per handler process
        assert files and str(worker.pid) not in {f.suffix[1:] for f in files}
        handled = read_handled(tmp_path)
        assert {p: sorted(o) for p, o in handled.items()} == {
            p: list(range(end)) for p, end in ends.items()
        }
        for path in files:  # each process saw each partition's records in order
            own = read_handled(tmp_path, int(path.suffix[1:]))
            assert all(o == sorted(o) for o in own.values())
        keys = {line.split(" ")[2] for f in files for line in f.read_text().splitlines()}
        assert keys and "-" not in keys  # keyed records: the key crossed too
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
