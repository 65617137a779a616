"""An existing AWS Lambda Kafka handler, unchanged, on the real broker."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration import aws_style_handler
from tests.integration.kafka_helpers import committed_offsets, create_topic, unique
from worker.config import WorkerConfig
from worker.runtime.worker import Worker

pytestmark = pytest.mark.kafka


async def test_an_aws_lambda_kafka_handler_runs_unchanged_and_failed_items_are_retried(
    kafka: str, kafka_client: str
):
    topic, group = unique("tel"), unique("g")
    await create_topic(kafka, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    for i in range(20):
        await producer.send_and_wait(topic, orjson.dumps({"i": i, "flaky": i in (4, 7)}))
    await producer.stop()
    aws_style_handler.calls.clear()
    cfg = WorkerConfig.model_validate(
        {
            "source": {
                "client": kafka_client,
                "bootstrap_servers": [kafka],
                "topics": [topic],
                "group_id": group,
            },
            "batching": {"batch_size": 10, "maximum_batching_window_ms": 2000},
            "handler": {
                "target": "tests.integration.aws_style_handler:lambda_handler",
                "style": "lambda",
                "timeout_s": 30,
            },
            "errors": {"retry_backoff_ms": [5, 20]},
            "metrics": {"enabled": False},
        }
    )
    worker = Worker(cfg)
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 60
    while await committed_offsets(kafka, group, topic) != {0: 20}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    worker.request_exit()
    await task
    # Lambda's rule: commit up to the first failed record, retry from it (4..9, with 7).
    assert aws_style_handler.calls == [list(range(10)), list(range(4, 10)), list(range(10, 20))]
    ids = [request_id for request_id, _ in aws_style_handler.contexts]
    assert len(set(ids)) == len(ids)
    assert all(0 < left <= 30_000 for _, left in aws_style_handler.contexts)
