"""One memory budget for the process: the client's prefetch share follows the assignment.

On the memory source (the core's side: what share it offers at each assignment) and on
a small fake client (the Kafka side: what lands in aiokafka's fetcher). The fetcher's
attributes are aiokafka internals; the last tests fail loudly if an upgrade moves them.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher

from worker.observe.metrics import Metrics
from worker.runtime.backpressure import PREFETCH_SHARE, Backpressure
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.fetch_limits import FETCHER_ATTRIBUTES, apply_limits, fetch_limits
from worker.testing import MemoryBroker, running_worker, wait_until

MiB = 1024 * 1024
BUDGET = 48 * MiB  # runtime.memory_budget_bytes' default


def kafka_config(**values: object) -> KafkaSourceConfig:
    return KafkaSourceConfig(topics=["t"], group_id="g", **values)


async def test_the_share_offered_to_the_source_follows_the_assignment():
    broker = MemoryBroker()
    broker.create_topic("t", 256)

    async def handler(batch) -> None:
        return None

    async with running_worker(handler, broker, ["t"]) as w:
        source = w.source
        await wait_until(lambda: len(source.prefetch_shares) == 1)  # started: all 256
        first_eight = [("t", p) for p in range(8)]
        rest = [("t", p) for p in range(8, 256)]
        await source.revoke(rest)
        await source.assign(rest)
        await source.revoke(rest)
        per_partition = [share // n for share, n in source.prefetch_shares]
        assert [n for _, n in source.prefetch_shares] == [256, 8, 256, 8]
        assert per_partition == [64 * 1024, 2 * MiB, 64 * 1024, 2 * MiB]
        assert sorted(p.key for p in w.assignments.partitions()) == first_eight


def test_the_kafka_client_fetch_limits_follow_the_assignment():
    fetcher = SimpleNamespace(_max_partition_fetch_bytes=2 * MiB, _fetch_max_bytes=50 * MiB)
    consumer = SimpleNamespace(_fetcher=fetcher)
    share = int(BUDGET * PREFETCH_SHARE)
    seen = []
    for partitions in (8, 256, 8):
        limits = fetch_limits(kafka_config(), share, partitions)
        apply_limits(consumer, limits)
        seen.append((fetcher._max_partition_fetch_bytes, fetcher._fetch_max_bytes))
        assert limits.prefetch_bytes <= share
    assert seen == [(2 * MiB, 16 * MiB), (64 * 1024, 16 * MiB), (2 * MiB, 16 * MiB)]


def test_the_fetch_limits_never_exceed_the_configured_ones():
    config = kafka_config(max_partition_fetch_bytes=256 * 1024, fetch_max_bytes=4 * MiB)
    one = fetch_limits(config, 16 * MiB, 1)
    assert (one.partition_bytes, one.request_bytes, one.prefetch_bytes) == (
        256 * 1024, 4 * MiB, 256 * 1024,
    )  # fmt: skip
    many = fetch_limits(config, 16 * MiB, 100_000)
    assert many.partition_bytes == 1024  # a floor: a fetch still asks for something


def test_the_pipeline_gets_the_budget_less_what_the_client_may_hold():
    class Prefetching:
        name = "fake"

        def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
            return min(partitions * 2 * MiB, share_bytes)

    bp = Backpressure(Prefetching(), BUDGET, Metrics())  # type: ignore[arg-type]
    assert bp.pipeline_budget_bytes == BUDGET
    bp.owned_changed(2)
    assert bp.pipeline_budget_bytes == BUDGET - 4 * MiB
    bp.owned_changed(256)
    assert bp.pipeline_budget_bytes == BUDGET - int(BUDGET * PREFETCH_SHARE)
    bp.owned_changed(0)  # a revoke of everything: the limits stay until the next assignment
    assert bp.pipeline_budget_bytes == BUDGET - int(BUDGET * PREFETCH_SHARE)


def test_a_client_without_the_fetcher_attributes_fails_loudly():
    with pytest.raises(RuntimeError, match="_max_partition_fetch_bytes"):
        apply_limits(
            SimpleNamespace(_fetcher=SimpleNamespace()), fetch_limits(kafka_config(), MiB, 1)
        )


def test_aiokafka_still_keeps_and_reads_the_fetch_limits_where_we_set_them():
    """If this fails after an aiokafka upgrade, `fetch_limits.apply_limits` writes
    attributes nothing reads any more: the client's prefetch is unbounded again."""
    start = inspect.getsource(AIOKafkaConsumer.start)
    assert "self._fetcher = Fetcher(" in start
    init = inspect.getsource(Fetcher.__init__)
    per_request = inspect.getsource(Fetcher._get_actions_per_node)
    for attribute in FETCHER_ATTRIBUTES:
        assert f"self.{attribute} = " in init, attribute
        assert f"self.{attribute}" in per_request, attribute  # read for every request
