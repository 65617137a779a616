"""A record whose header name is not UTF-8, on librdkafka (real broker; the record is
written by aiokafka's pure-Python builder given raw bytes for the name, as a C or Go
producer can write it: `raw_header_names`).

confluent-kafka's `Message.headers()` raises SystemError for it once, then returns a
cached list holding a NULL. Before the fix, a Lambda-style handler crashed the worker
with a segmentation fault (exit 139) at its first batch, on every restart; a native
handler whose records went to a file DLQ ended the lane when the writer read the headers
(exit 1, on every restart). Now the record is handed on without its headers
(`event=record_headers_unreadable`) and everything is handled and committed.
(aiokafka's decoder refuses the whole batch instead: the partition waits at it with
`event=fetch_stuck`, as for a corrupt batch; the README's failure section says so.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration import kafka_helpers
from tests.integration.kafka_helpers import (
    ROOT,
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka

RECORDS, BAD = 5, 2


def topic_with_a_bad_header_name(kafka: str) -> str:
    topic = unique("rawhdr")
    asyncio.run(create_topic(kafka, topic, 1))
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "tests.integration.raw_header_names", kafka, topic,
         str(RECORDS), str(BAD)],
        check=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    return topic


@pytest.fixture
def librdkafka():
    kafka_helpers.client["name"] = "librdkafka"
    try:
        yield
    finally:
        kafka_helpers.client["name"] = "aiokafka"


def run_until_committed(config: Path, tmp_path: Path, kafka: str, group: str, topic: str,
                        env: dict[str, str] | None = None) -> None:  # fmt: skip
    worker = WorkerProcess(config, tmp_path, env)
    try:
        eventually(
            lambda: (
                worker.proc.poll() is not None or committed(kafka, group, topic).get(0) == RECORDS
            ),
            what="every record committed",
        )
        assert worker.proc.poll() is None, f"exit {worker.proc.returncode}:\n{worker.log()[-3000:]}"
        worker.wait_for_log("event=record_headers_unreadable")
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


def test_a_lambda_handler_gets_the_record_without_its_headers_and_the_worker_lives(
    kafka: str, tmp_path: Path, librdkafka
) -> None:
    topic, group = topic_with_a_bad_header_name(kafka), unique("g")
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"target": "aws_style_handler:lambda_handler", "style": "lambda"},
    )  # fmt: skip
    run_until_committed(config, tmp_path, kafka, group, topic)


def test_a_dead_lettered_record_with_a_bad_header_name_reaches_the_file_dlq(
    kafka: str, tmp_path: Path, librdkafka
) -> None:
    topic, group = topic_with_a_bad_header_name(kafka), unique("g")
    dlq = tmp_path / "dlq.jsonl"
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        errors={"maximum_retry_attempts": 0, "on_failure": f"file://{dlq}",
                "retry_backoff_ms": [10, 20]},
    )  # fmt: skip
    poison = ",".join(f"0:{i}" for i in range(RECORDS))  # every record fails: all to the DLQ
    run_until_committed(config, tmp_path, kafka, group, topic, {"RECORD_POISON": poison})
    records = [r for line in dlq.read_bytes().splitlines() for r in orjson.loads(line)["records"]]
    assert sorted(r["offset"] for r in records) == list(range(RECORDS))
    headers = {r["offset"]: r["headers"] for r in records}
    assert headers[BAD] == [] and headers[0] == [["ok", "dg=="]]
