"""parallelization_factor on the real broker: per-key order with eight lanes per partition."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest

from tests.integration.kafka_helpers import (
    committed_offsets,
    create_topic,
    end_offsets,
    produce_keyed,
    unique,
)
from worker.config import WorkerConfig
from worker.runtime.worker import Worker

pytestmark = pytest.mark.kafka


async def test_eight_lanes_per_partition_keep_every_keys_sequence_in_order(
    kafka: str, kafka_client: str
):
    topic, group = unique("tel"), unique("g")
    await create_topic(kafka, topic, 2)
    await produce_keyed(kafka, topic, 6000, keys=64)
    ends = await end_offsets(kafka, topic, 2)
    rng = random.Random(11)
    seen: dict[str, list[int]] = defaultdict(list)
    inflight = {"now": 0, "max": 0}

    async def handler(batch) -> None:
        inflight["now"] += 1
        inflight["max"] = max(inflight["max"], inflight["now"])
        await asyncio.sleep(rng.random() / 200)  # lanes finish in any order
        for r in batch.records:
            reading = r.json()
            seen[reading["key"]].append(reading["seq"])
        inflight["now"] -= 1

    cfg = WorkerConfig.model_validate(
        {
            "source": {
                "client": kafka_client,
                "bootstrap_servers": [kafka],
                "topics": [topic],
                "group_id": group,
            },
            "batching": {"batch_size": 20, "maximum_batching_window_ms": 20},
            "handler": {"parallelization_factor": 8},
            "metrics": {"enabled": False},
        }
    )
    worker = Worker(cfg, handler=handler)
    task = asyncio.create_task(worker.serve())
    deadline = time.monotonic() + 120
    while await committed_offsets(kafka, group, topic) != ends:
        assert time.monotonic() < deadline, "not fully committed in time"
        await asyncio.sleep(0.1)
    worker.request_exit()
    await task
    assert sum(map(len, seen.values())) == 6000
    for key, seqs in seen.items():
        assert seqs == list(range(len(seqs))), f"{key} out of order"
    assert len(seen) == 64 and inflight["max"] > 2
