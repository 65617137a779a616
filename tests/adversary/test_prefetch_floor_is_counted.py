"""The client's 1 KiB fetch floor at many partitions holds more than the prefetch share:
what it may really hold must come off the pipeline's part and show on the gauge, or the
process outgrows its budget with the partition count while the gauge says it does not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from worker.observe.metrics import Metrics
from worker.runtime.backpressure import Backpressure
from worker.runtime.worker import Worker
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.fetch_limits import apply_limits, fetch_limits
from worker.sources.memory import MemoryBroker, MemorySource
from worker.testing import memory_config, wait_until

BUDGET = 1024 * 1024  # the smallest memory_budget_bytes allowed


class FloorBoundKafka:
    """The Kafka source's `fit_prefetch`, on a stand-in for the started consumer."""

    name = "kafka"

    def __init__(self) -> None:
        self.config = KafkaSourceConfig(topics=["t"], group_id="g")
        self.fetcher = SimpleNamespace(
            _max_partition_fetch_bytes=0, _fetch_max_bytes=0, _prefetch_backoff=0.1
        )

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        limits = fetch_limits(self.config, share_bytes, partitions)
        apply_limits(SimpleNamespace(_fetcher=self.fetcher), limits)
        return limits.prefetch_bytes


def test_a_prefetch_over_its_share_comes_off_the_pipeline_and_shows_on_the_gauge():
    metrics = Metrics()
    source = FloorBoundKafka()
    bp = Backpressure(source, BUDGET, metrics)  # type: ignore[arg-type]
    for partitions in (8, 4096):
        bp.owned_changed(partitions)
        may_hold = source.fetcher._max_partition_fetch_bytes * partitions  # per fetch
        shown = metrics.memory_bytes.labels("kafka", "client_prefetch")._value.get()
        assert shown == min(may_hold, BUDGET)
        assert bp.pipeline_budget_bytes + min(may_hold, BUDGET) <= BUDGET
        assert bp.pipeline_budget_bytes >= 0


class HoldsTheWholeBudget(MemorySource):
    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        super().fit_prefetch(share_bytes, partitions)
        return BUDGET * partitions  # more than there is: the pipeline is left nothing


async def test_with_nothing_left_for_the_pipeline_every_record_is_still_handled_in_order():
    broker = MemoryBroker()
    broker.create_topic("t", 4)
    for i in range(400):
        broker.produce("t", b"%04d" % i + b"." * 2000, partition=i % 4)
    seen: dict[int, list[int]] = {p: [] for p in range(4)}

    async def handler(batch) -> None:
        for r in batch.records:
            seen[r.partition].append(r.offset)

    source = HoldsTheWholeBudget(broker, ["t"], group_id="g")
    config = memory_config({"runtime": {"memory_budget_bytes": BUDGET}})
    worker = Worker(config, source=source, handler=handler)
    task = asyncio.create_task(worker.serve())
    try:
        await wait_until(lambda: all(broker.committed("g", "t", p) == 100 for p in range(4)))
    finally:
        worker.request_exit()
        await task
    assert seen == {p: list(range(100)) for p in range(4)}


def test_a_member_left_with_no_partitions_shows_no_client_prefetch():
    metrics = Metrics()
    bp = Backpressure(FloorBoundKafka(), BUDGET, metrics)  # type: ignore[arg-type]
    bp.owned_changed(8)
    gauge = metrics.memory_bytes.labels("kafka", "client_prefetch")
    assert gauge._value.get() > 0
    bp.owned_changed(0)  # more members than partitions: this one owns none, holds none
    assert gauge._value.get() == 0
