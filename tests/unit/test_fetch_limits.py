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
from worker.sources.kafka.fetch_limits import (
    CLIENT_PREFETCH_BACKOFF_S,
    FETCHER_ATTRIBUTES,
    HOLD_S,
    SPREAD,
    PauseAwareLimits,
    apply_limits,
    broker_count,
    fetch_limits,
)
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
    fetcher = SimpleNamespace(
        _max_partition_fetch_bytes=2 * MiB, _fetch_max_bytes=50 * MiB, _prefetch_backoff=0.1
    )
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


def fitted(partitions: int, brokers: int | None, share: int = int(BUDGET * PREFETCH_SHARE)):
    fetcher = SimpleNamespace(
        _max_partition_fetch_bytes=0, _fetch_max_bytes=0, _prefetch_backoff=0.1
    )
    limits = fetch_limits(kafka_config(), share, partitions, brokers)
    apply_limits(SimpleNamespace(_fetcher=fetcher), limits)
    return limits, fetcher


def test_many_partitions_a_broker_split_the_share_by_broker_one_response_at_a_time():
    """256 partitions, one broker, the default budget: not 64 KiB a partition (fewer
    records than a batch of 500) but 2 MiB, with the client holding one 16 MiB response
    at most, because results now wait for `getmany` before the next request."""
    share = int(BUDGET * PREFETCH_SHARE)
    limits, fetcher = fitted(256, 1)
    assert limits.one_response
    assert (limits.partition_bytes, limits.request_bytes) == (2 * MiB, 16 * MiB)
    assert limits.partition_bytes == limits.request_bytes // SPREAD
    assert limits.prefetch_bytes == 16 * MiB == share  # one response, not 256 x 2 MiB
    assert fetcher._prefetch_backoff == HOLD_S
    three, _ = fitted(256, 3)  # one response from each broker at once: a third each
    assert three.request_bytes == share // 3
    assert three.partition_bytes == share // 3 // SPREAD
    assert three.prefetch_bytes == 3 * (share // 3) <= share


def test_few_partitions_a_broker_keep_the_even_split_and_the_client_backoff():
    """8 partitions at the default budget: 2 MiB each already (the configured limit), so
    nothing changes, and aiokafka keeps its own 100 ms backoff (a next request may overlap
    the last response's consumption); nor without the broker count (the even split is
    honest whatever the brokers)."""
    limits, fetcher = fitted(8, 1)
    assert not limits.one_response
    assert (limits.partition_bytes, limits.prefetch_bytes) == (2 * MiB, 16 * MiB)
    assert fetcher._prefetch_backoff == CLIENT_PREFETCH_BACKOFF_S
    unknown, fetcher = fitted(256, None)
    assert not unknown.one_response
    assert (unknown.partition_bytes, unknown.prefetch_bytes) == (64 * 1024, 16 * MiB)
    assert fetcher._prefetch_backoff == CLIENT_PREFETCH_BACKOFF_S
    switched, fetcher = fitted(256, 1)
    assert switched.one_response and fetcher._prefetch_backoff == HOLD_S
    apply_limits(SimpleNamespace(_fetcher=fetcher), fetch_limits(kafka_config(), MiB, 8, 1))
    assert fetcher._prefetch_backoff == CLIENT_PREFETCH_BACKOFF_S  # back, on reassignment


def test_what_the_client_may_hold_never_exceeds_the_share_in_either_mode():
    """Across budgets, partition counts and broker counts: the prefetch stays within the
    share wherever the 1 KiB floor does not force more, the limits within the
    configured ones, and a partition never gets less than the even split gave it."""
    config = kafka_config()
    for share in (349_525, 4 * MiB, 16 * MiB, 600 * MiB):
        for partitions in (1, 8, 64, 256, 1024, 4096):
            for brokers in (None, 1, 3, 12):
                limits = fetch_limits(config, share, partitions, brokers)
                even = fetch_limits(config, share, partitions)
                floor = 1024 * min(partitions, brokers or partitions)
                assert limits.prefetch_bytes <= max(share, floor), (share, partitions, brokers)
                assert limits.partition_bytes >= even.partition_bytes
                assert limits.partition_bytes <= config.max_partition_fetch_bytes
                assert limits.request_bytes <= config.fetch_max_bytes
                if limits.one_response:  # the bound rests on one response a broker
                    assert limits.prefetch_bytes <= limits.request_bytes * (brokers or 0)


class PausingConsumer:
    """Just enough of a started aiokafka consumer: its fetcher and assignment."""

    def __init__(self) -> None:
        self._fetcher = SimpleNamespace(
            _max_partition_fetch_bytes=0, _fetch_max_bytes=0, _prefetch_backoff=0.1
        )

    def assignment(self) -> set[str]:
        return {"a", "b", "c"}


def test_while_any_partition_is_paused_a_partition_fetches_only_its_even_part():
    """Held back by the budget, a resumed partition takes 64 KiB again, not 2 MiB: the
    rest of a response for paused partitions would only be dropped and fetched again.
    From the first pause to the last resume; the request and the bound do not change."""
    share = int(BUDGET * PREFETCH_SHARE)
    consumer, tracker = PausingConsumer(), PauseAwareLimits()
    limits = fetch_limits(kafka_config(), share, 256, 1)
    tracker.fit(consumer, limits)
    fetcher = consumer._fetcher
    seen = [fetcher._max_partition_fetch_bytes]
    for step, partition in [("pause", "a"), ("pause", "b"), ("resume", "a"),
                            ("resume", "c"), ("resume", "b"), ("resume", "b")]:  # fmt: skip
        (tracker.paused if step == "pause" else tracker.resumed)(consumer, partition)
        seen.append(fetcher._max_partition_fetch_bytes)
    roomy, even = 2 * MiB, share // 256
    assert seen == [roomy, even, even, even, even, roomy, roomy]
    assert (fetcher._fetch_max_bytes, fetcher._prefetch_backoff) == (16 * MiB, HOLD_S)
    assert limits.held_back_bytes == even and limits.prefetch_bytes == share

    tracker.paused(consumer, "a")
    tracker.paused(consumer, "x")  # then given away: a revoke resumes none
    again = PausingConsumer()
    tracker.fit(again, limits)  # a new assignment while "a" is still paused
    assert again._fetcher._max_partition_fetch_bytes == even
    tracker.resumed(again, "a")
    assert again._fetcher._max_partition_fetch_bytes == roomy  # "x" forgotten


def test_with_the_even_split_a_pause_changes_no_limit():
    consumer, tracker = PausingConsumer(), PauseAwareLimits()
    tracker.fit(consumer, fetch_limits(kafka_config(), int(BUDGET * PREFETCH_SHARE), 8, 1))
    tracker.paused(consumer, "a")
    assert consumer._fetcher._max_partition_fetch_bytes == 2 * MiB
    tracker.resumed(consumer, "a")
    assert consumer._fetcher._max_partition_fetch_bytes == 2 * MiB


def test_the_broker_count_comes_from_the_started_consumers_metadata():
    cluster = SimpleNamespace(brokers=lambda: {"b1", "b2", "b3"})
    assert broker_count(SimpleNamespace(_client=SimpleNamespace(cluster=cluster))) == 3
    none = SimpleNamespace(brokers=lambda: set())  # no metadata yet: the even split
    assert broker_count(SimpleNamespace(_client=SimpleNamespace(cluster=none))) is None
    assert broker_count(SimpleNamespace()) is None


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
    for attribute in ("_max_partition_fetch_bytes", "_fetch_max_bytes"):
        assert f"self.{attribute} = " in init, attribute
        assert f"self.{attribute}" in per_request, attribute  # read for every request
    assert set(FETCHER_ATTRIBUTES) == {
        "_max_partition_fetch_bytes", "_fetch_max_bytes", "_prefetch_backoff"
    }  # fmt: skip


def test_aiokafka_still_holds_a_broker_back_while_its_results_wait_within_the_backoff():
    """The one-response mode's bound: each result takes the backoff read afresh, and a
    broker with a result waiting within it gets no request. If an upgrade changes this,
    256 partitions may hold 256 x their limit again."""
    init = inspect.getsource(Fetcher.__init__)
    assert "self._prefetch_backoff = prefetch_backoff" in init
    assert inspect.signature(Fetcher).parameters["prefetch_backoff"].default == (
        CLIENT_PREFETCH_BACKOFF_S
    )
    results = inspect.getsource(Fetcher._proc_fetch_request)
    assert "backoff=self._prefetch_backoff" in results
    per_request = inspect.getsource(Fetcher._get_actions_per_node)
    assert "backoff = record.calculate_backoff()" in per_request
    assert "if node_id in backoff_by_nodes:" in per_request
