"""SASL against a SASL listener of the real broker: PLAIN and SCRAM work, a wrong password is
named as such within seconds, and the secret never shows in logs or check-config."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scripts import kafka_broker
from tests.integration.kafka_helpers import ROOT, WorkerProcess, on_clients, unique, write_config
from worker.config import WorkerConfig
from worker.runtime.worker import Worker
from worker.sources.kafka.lag import group_lag
from worker.sources.kafka.security import client_kwargs

pytestmark = pytest.mark.kafka
SECRET = kafka_broker.SASL_USERS["alice"]


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = kafka_broker.start(tmp_path_factory.mktemp("sasl-kafka"), sasl=True)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def source(bootstrap: str, mechanism: str, password: str = SECRET, **extra: object) -> dict:
    return {
        "bootstrap_servers": [bootstrap],
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": password,
        **extra,
    }


@on_clients("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"], librdkafka=["SCRAM-SHA-512"])
async def test_the_worker_consumes_and_commits_over_sasl(
    sasl_kafka: str, kafka_client: str, mechanism: str
):
    topic, group = unique("secure"), unique("g")
    cfg = WorkerConfig.model_validate(
        {
            "source": source(
                sasl_kafka, mechanism, topics=[topic], group_id=group, client=kafka_client
            ),
            "batching": {"maximum_batching_window_ms": 10},
            "metrics": {"enabled": False},
        }
    )
    connection = client_kwargs(cfg.source)
    admin = AIOKafkaAdminClient(**connection)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(**connection)
    await producer.start()
    for i in range(200):
        await producer.send(topic, b"%d" % i, partition=i % 2)
    await producer.flush()
    await producer.stop()
    seen: list[bytes] = []

    async def handler(batch) -> None:
        seen.extend(r.value for r in batch.records)

    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 60
    while sum(r.lag for r in await group_lag(cfg.source)) or len(seen) < 200:
        assert time.monotonic() < deadline, "not everything consumed and committed"
        await asyncio.sleep(0.1)
    worker.request_exit()
    await task
    assert sorted(seen, key=int) == [b"%d" % i for i in range(200)]


def test_a_wrong_password_fails_fast_with_one_line_naming_authentication(
    sasl_kafka: str, kafka_client: str, tmp_path: Path
):
    config = write_config(tmp_path / "w.toml", sasl_kafka, "any", unique("g"))
    text = config.read_text().replace(
        "[source]\n",
        '[source]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        'sasl_plain_username = "alice"\n',
    )
    config.write_text(text)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests/integration'}{os.pathsep}{ROOT}",
        "WORKER__SOURCE__SASL_PLAIN_PASSWORD": "not-the-secret-xyz",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT / "tests/integration", env=env, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 20, f"took {took:.1f}s to give up"
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "authentication failed for user 'alice'" in errors[0]
    assert "not-the-secret-xyz" not in result.stdout + result.stderr


def test_the_secret_never_appears_in_logs_or_check_config(sasl_kafka: str, tmp_path: Path):
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    topic = unique("secure")
    config = write_config(
        tmp_path / "w.toml", sasl_kafka, topic, unique("g"),
        source={k: v for k, v in source(sasl_kafka, "SCRAM-SHA-256").items()
                if k != "sasl_plain_password"} | {"sasl_plain_password_file": str(secret_file)},
        runtime={"log_level": "DEBUG", "log_format": "json"},
    )  # fmt: skip
    checked = subprocess.run(
        [sys.executable, "-m", "worker", "check-config", "--config", str(config),
         "--set", "handler.target=handlers.iot_telemetry:handle"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert '"sasl_plain_password": "**********"' in checked.stdout
    assert SECRET not in checked.stdout + checked.stderr
    cfg = WorkerConfig.model_validate(
        {"source": source(sasl_kafka, "SCRAM-SHA-256", topics=[topic])}
    )

    async def create() -> None:
        admin = AIOKafkaAdminClient(**client_kwargs(cfg.source))
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()

    asyncio.run(create())
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log(r'"event":"started"')
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
    log = worker.log()
    assert '"event":"shutdown_complete"' in log
    assert SECRET not in log


def test_redrive_uses_the_configs_security_settings(sasl_kafka: str, tmp_path: Path):
    source_topic, dlq = unique("secure"), unique("dlq")
    cfg = WorkerConfig.model_validate(
        {"source": source(sasl_kafka, "SCRAM-SHA-256", topics=[source_topic])}
    )

    async def prepare() -> None:
        connection = client_kwargs(cfg.source)
        admin = AIOKafkaAdminClient(**connection)
        await admin.start()
        await admin.create_topics([NewTopic(source_topic, 1, 1), NewTopic(dlq, 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(**connection)
        await producer.start()
        for i in range(3):
            await producer.send_and_wait(dlq, b"%d" % i, headers=[("worker.condition", b"x")])
        await producer.stop()

    asyncio.run(prepare())
    (tmp_path / "password").write_text(SECRET)
    settings = {k: v for k, v in source(sasl_kafka, "SCRAM-SHA-256").items()
                if k != "sasl_plain_password"}  # fmt: skip
    config = write_config(
        tmp_path / "w.toml", sasl_kafka, source_topic, unique("g"),
        source={**settings, "sasl_plain_password_file": str(tmp_path / "password")},
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "worker", "redrive", "--from", f"kafka://{dlq}",
         "--to", f"kafka://{source_topic}", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"moved 3 records from kafka://{dlq}" in result.stdout
    assert SECRET not in result.stdout + result.stderr
