"""The first hour on the real broker: a misspelt topic, a DLQ never created, a late broker.

Each command runs as a child process, as a user runs it: a failure is one `error:`
line on stderr naming the topic and the broker, exit 1, within 5 s, no traceback,
and no `exit_code=0` logged before it. The faults are real: topics that do not
exist on the session's broker, and a broker of the test's own that is stopped
and started again 10 s after the worker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    HERE,
    ROOT,
    WorkerProcess,
    create_topic,
    eventually,
    produce_keyed,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)

#: The bound the issue asks for; the measured time is far below it.
ANSWER_WITHIN_S = 5.0
#: How long after the worker its broker comes up.
BROKER_LATE_S = 10.0


def worker(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True, text=True, cwd=HERE, env=env, timeout=60,
    )  # fmt: skip
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess, code: int = 1) -> str:
    assert done.returncode == code, done.stderr + done.stdout[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert "exit_code=0" not in done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_a_missing_source_topic_is_one_line_naming_it_and_the_broker(kafka, kafka_client, tmp_path):
    config = write_config(tmp_path / "w.toml", kafka, "telemetyr", unique("g"))
    done, took = worker("run", "--config", str(config))
    line = one_error_line(done)
    assert "source.topics: telemetyr (not found)" in line and kafka in line
    assert took < ANSWER_WITHIN_S, f"{took:.1f} s"
    assert "not found in cluster metadata" not in done.stdout


def test_a_missing_dead_letter_topic_is_one_line_naming_it_and_the_broker(kafka, tmp_path):
    topic = unique("telemetry")
    asyncio.run(create_topic(kafka, topic, 1))
    config = write_config(tmp_path / "w.toml", kafka, topic, unique("g"),
                          errors={"on_failure": "kafka://never-created-dlq"})  # fmt: skip
    done, took = worker("run", "--config", str(config))
    line = one_error_line(done)
    assert "errors.on_failure kafka://never-created-dlq" in line
    assert "never-created-dlq (not found)" in line and kafka in line
    assert took < ANSWER_WITHIN_S, f"{took:.1f} s"


@pytest.mark.parametrize(
    ("command", "exactly_once"), [("run", False), ("run", True), ("check-config --connect", False)]
)
def test_a_missing_output_topic_is_one_line_naming_it(kafka, tmp_path, command, exactly_once):
    topic = unique("telemetry")
    asyncio.run(create_topic(kafka, topic, 1))
    config = write_config(tmp_path / "w.toml", kafka, topic, unique("g"),
                          outputs={"topics": ["never-created-out"],
                                   "exactly_once": exactly_once})  # fmt: skip
    done, took = worker(*command.split(), "--config", str(config))
    line = one_error_line(done)
    assert "outputs.topics: topic never-created-out (not found)" in line and kafka in line
    assert took < ANSWER_WITHIN_S, f"{took:.1f} s"


def test_check_config_connect_names_a_missing_topic_offline_check_does_not(kafka, tmp_path):
    config = write_config(tmp_path / "w.toml", kafka, "telemetyr", unique("g"))
    done, took = worker("check-config", "--connect", "--config", str(config))
    line = one_error_line(done)
    assert "telemetyr (not found)" in line and kafka in line
    assert took < ANSWER_WITHIN_S and done.stdout == ""
    offline, _ = worker("check-config", "--config", str(config))
    assert offline.returncode == 0, offline.stderr


def test_lag_of_a_missing_topic_is_an_error_not_an_empty_table(kafka, tmp_path):
    config = write_config(tmp_path / "w.toml", kafka, "telemetyr", unique("g"))
    done, _ = worker("lag", "--config", str(config))
    line = one_error_line(done)
    assert "telemetyr (not found)" in line and kafka in line
    assert done.stdout == ""


def test_redrive_to_a_missing_topic_is_one_line_and_moves_nothing(kafka, tmp_path):
    dlq = unique("dlq")

    async def one_dead_letter() -> None:
        await create_topic(kafka, dlq, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(dlq, b"{}", key=b"d1")
        finally:
            await producer.stop()

    asyncio.run(one_dead_letter())
    done, took = worker("redrive", "--from", f"kafka://{dlq}", "--to", "kafka://telemetyr",
                        "--bootstrap", kafka)  # fmt: skip
    line = one_error_line(done)
    assert "kafka://telemetyr (not found)" in line and kafka in line
    assert dlq not in line  # the DLQ exists: only the missing topic is named
    assert took < ANSWER_WITHIN_S, f"{took:.1f} s"


def test_a_worker_started_before_its_broker_waits_then_handles_records(tmp_path):
    """The broker is made (topic, offsets topic) and stopped, the worker started, and the
    broker started again on the same port and data 10 s later."""
    broker = kafka_broker.start(tmp_path / "kafka")
    topic = unique("telemetry")
    try:
        asyncio.run(create_topic(broker.bootstrap, topic, 2))
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
    finally:
        broker.stop()
    config = write_config(tmp_path / "w.toml", broker.bootstrap, topic, unique("g"),
                          source={"connect_timeout_s": 120})  # fmt: skip
    records = tmp_path / "records"
    records.mkdir()
    proc = WorkerProcess(config, records)
    try:
        proc.wait_for_log(r"event=broker_wait for='source' attempt=1 ", timeout_s=30)
        time.sleep(BROKER_LATE_S)  # the fault itself: how late the broker comes
        broker = kafka_broker.restart(tmp_path / "kafka")
        try:
            proc.wait_for_log(r"event=started", timeout_s=60)
            asyncio.run(produce_keyed(broker.bootstrap, topic, 200, partitions=2))

            def handled() -> int:
                return sum(len(v) for v in read_handled(records).values())

            eventually(lambda: handled() >= 200, 60, "the worker to handle 200 records")
            proc.terminate()
            assert proc.wait(30) == 0
        finally:
            proc.stop()
            broker.stop()
    finally:
        proc.stop()
    log = proc.log()
    assert log.count("event=broker_wait for='source'") >= 2
    assert "Traceback" not in log and "event=source_failed" not in log
    assert sorted(read_handled(records)) == [0, 1]
