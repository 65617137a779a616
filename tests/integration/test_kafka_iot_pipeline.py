"""The IoT pipeline on the real broker and a real SQLite file, killed -9 mid-run.

After a restart the table holds exactly one row per valid reading produced, the alerts
topic (read_committed, exactly_once on) exactly the anomalies, each once, and the
malformed readings are in the on-failure destination. The fault is SIGKILL of the
worker process, provably mid-run (rows stored, the topic not committed to its end).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from load.pipeline_telemetry import telemetry as pipeline_telemetry
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    end_offsets,
    eventually,
    unique,
    write_config,
)
from tests.integration.output_helpers import create_output_topic, read_topic
from tests.integration.test_kafka_crash import finish_with_a_new_worker

pytestmark = pytest.mark.kafka
PARTITIONS, DEVICES, PER_DEVICE = 4, 40, 150


def telemetry() -> tuple[list[tuple[bytes, bytes]], set[tuple[str, int, str]], int, int]:
    return pipeline_telemetry(DEVICES, PER_DEVICE)


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await producer.start()
    try:
        acks = [await producer.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def test_the_pipeline_killed_mid_run_stores_alerts_and_dead_letters_exactly_once(
    kafka: str, tmp_path: Path
):
    records, anomalies, valid, malformed = telemetry()
    topic, alerts, group = unique("telemetry"), unique("alerts"), unique("g")
    asyncio.run(_produce(kafka, topic, records))
    asyncio.run(create_output_topic(kafka, alerts, 1))
    ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
    db, dlq = tmp_path / "iot.db", tmp_path / "dlq.jsonl"
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        handler={"target": "iot_slow_handler:handle"},
        batching={"batch_size": 50},
        outputs={"topics": [alerts], "exactly_once": True},
        errors={"maximum_retry_attempts": 1, "on_failure": f"file://{dlq}"},
    )  # fmt: skip
    env = {"IOT_DATABASE_URL": f"sqlite:///{db}", "IOT_ALERTS_TOPIC": alerts}

    def rows() -> int:
        if not db.exists():
            return 0
        try:
            return sqlite3.connect(db).execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0

    first = WorkerProcess(config, tmp_path, env)
    try:
        eventually(lambda: rows() >= valid // 4, what="readings stored")
        assert committed(kafka, group, topic) != ends, "the run ended before the kill"
        first.kill9()
        first.wait()
    finally:
        first.stop()
    finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)

    count, distinct = (
        sqlite3.connect(db)
        .execute("SELECT COUNT(*), COUNT(DISTINCT device_id || ':' || seq) FROM readings")
        .fetchone()
    )
    assert (count, distinct) == (valid, valid)
    values = asyncio.run(read_topic(kafka, alerts, 1, "read_committed"))
    seen = [orjson.loads(v) for v in values]
    assert sorted((a["device_id"], a["seq"], a["alert"]) for a in seen) == sorted(anomalies)
    dead = [orjson.loads(line) for line in dlq.read_text().splitlines()]
    # Each malformed reading at least once (the destination is at least once too).
    assert len({(e["partition"], r["offset"]) for e in dead for r in e["records"]}) == malformed
