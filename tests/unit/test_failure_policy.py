"""Failure semantics on the memory source: bisect, retries, age, partial responses, destinations."""

import asyncio
import time

import pytest

from worker.destinations.base import DestinationError, FailureEvent
from worker.observe.metrics import Metrics
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

TOPIC = "t"


class RecordingDestination:
    """Keeps failure events in memory; can be made to refuse writes like a broker that is down."""

    name = "memory://dlq"

    def __init__(self) -> None:
        self.events: list[FailureEvent] = []
        self.down = False
        self.refused = 0

    async def start(self) -> None:
        return None

    async def send(self, event: FailureEvent) -> None:
        if self.down:
            self.refused += 1
            raise DestinationError("destination down")
        self.events.append(event)

    async def stop(self) -> None:
        return None

    def offsets(self) -> list[int]:
        return [r.offset for e in self.events for r in e.records]


class Handler:
    """Records the offsets of each call; raises on poison offsets, or returns what `reply` says."""

    def __init__(self, poison=(), reply=None, hang_on=()) -> None:
        self.calls: list[list[int]] = []
        self.poison = set(poison)
        self.reply = reply
        self.hang_on = set(hang_on)

    async def __call__(self, batch):
        offsets = [r.offset for r in batch.records]
        self.calls.append(offsets)
        if self.hang_on.intersection(offsets):
            await asyncio.Event().wait()
        if self.poison.intersection(offsets):
            raise ValueError(f"poison in {offsets[0]}..{offsets[-1]}")
        if self.reply is not None:
            return self.reply(batch, len(self.calls))
        return None


def one_partition(n: int, timestamp_ms=None) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    for i in range(n):
        broker.produce(TOPIC, b"%d" % i, partition=0, timestamp_ms=timestamp_ms)
    return broker


async def run(handler, broker, errors, batch_size=16, destination=None, metrics=None):
    settings = {"batching": {"batch_size": batch_size}, "errors": errors}
    async with running_worker(
        handler, broker, [TOPIC], settings, metrics=metrics, destination=destination
    ):
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))


async def test_bisect_isolates_the_poison_record_left_half_first_then_retries_it():
    broker = one_partition(16)
    handler = Handler(poison={12})
    dlq = RecordingDestination()
    errors = {"bisect_batch_on_function_error": True, "maximum_retry_attempts": 2}
    await run(handler, broker, errors, destination=dlq)
    assert handler.calls == [
        list(range(16)),  # fails: split, no retry consumed
        list(range(8)),  # left half first: succeeds
        list(range(8, 16)),  # fails: split
        [8, 9, 10, 11],
        [12, 13, 14, 15],  # fails: split
        [12, 13],  # fails: split
        [12],  # fails: first of 1 + 2 retries
        [12],
        [12],  # retries exhausted: to the destination
        [13],
        [14, 15],
    ]
    assert dlq.offsets() == [12]
    assert dlq.events[0].condition == "RetryAttemptsExhausted"
    assert dlq.events[0].attempts == 3
    assert dlq.events[0].error_type == "ValueError"


async def test_bisect_off_retries_the_whole_batch_then_gives_up_the_whole_batch():
    broker = one_partition(20)
    handler = Handler(poison={5})
    dlq = RecordingDestination()
    metrics = Metrics()
    errors = {"bisect_batch_on_function_error": False, "maximum_retry_attempts": 2}
    # Taken before the run: the series leave the registry with the partition at the stop.
    dead_lettered = metrics.records_dead_lettered.labels("memory", "t-0")
    retries = metrics.retries.labels("memory", "t-0")
    await run(handler, broker, errors, batch_size=10, destination=dlq, metrics=metrics)
    assert handler.calls == [list(range(10))] * 3 + [list(range(10, 20))]
    assert dlq.offsets() == list(range(10))
    assert dead_lettered.value == 10
    assert retries.value == 2


async def test_zero_retries_gives_up_a_failing_record_after_one_invocation():
    broker = one_partition(2)
    handler = Handler(poison={0})
    dlq = RecordingDestination()
    errors = {"bisect_batch_on_function_error": True, "maximum_retry_attempts": 0}
    await run(handler, broker, errors, batch_size=2, destination=dlq)
    assert handler.calls == [[0, 1], [0], [1]]
    assert dlq.offsets() == [0]


async def test_a_handler_timeout_is_treated_like_an_error():
    broker = one_partition(4)
    handler = Handler(hang_on={2})
    dlq = RecordingDestination()
    settings = {
        "batching": {"batch_size": 4},
        "handler": {"timeout_s": 0.05},
        "errors": {"bisect_batch_on_function_error": True, "maximum_retry_attempts": 1},
    }
    async with running_worker(handler, broker, [TOPIC], settings, destination=dlq) as w:
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        timeouts = w.metrics.batches.labels("memory", "t-0", "timeout").value
    assert handler.calls == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [2], [3]]
    assert dlq.offsets() == [2]
    assert dlq.events[0].error_type == "Timeout"
    assert timeouts == 4


async def test_records_older_than_the_age_limit_go_to_the_destination_without_an_invoke():
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 1)
    old = int((time.time() - 3600) * 1000)
    for i in range(6):
        broker.produce(TOPIC, b"%d" % i, partition=0, timestamp_ms=old if i % 2 else None)
    handler = Handler()
    dlq = RecordingDestination()
    await run(handler, broker, {"maximum_record_age_s": 60}, batch_size=6, destination=dlq)
    assert handler.calls == [[0, 2, 4]]
    assert dlq.offsets() == [1, 3, 5]
    assert dlq.events[0].condition == "RecordAgeExceeded"


async def test_records_that_age_out_while_retrying_are_given_up(monkeypatch):
    broker = one_partition(3)
    handler = Handler(poison={1})
    dlq = RecordingDestination()
    clock = {"now": time.time()}
    settings = {
        "batching": {"batch_size": 3},
        "errors": {"bisect_batch_on_function_error": False, "maximum_record_age_s": 60},
    }
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    async with running_worker(handler, broker, [TOPIC], settings, destination=dlq):
        await wait_until(lambda: len(handler.calls) >= 2)
        clock["now"] += 120  # the records are now two minutes old
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
    assert dlq.offsets() == [0, 1, 2]
    assert all(call == [0, 1, 2] for call in handler.calls)


def failing(*offsets):
    return lambda batch, n: list(offsets) if n == 1 else None


async def test_partial_response_default_retries_from_the_first_failed_record():
    broker = one_partition(10)
    handler = Handler(reply=failing(3, 6))
    await run(handler, broker, {"partial_retry": "from_first_failure"}, batch_size=10)
    assert handler.calls == [list(range(10)), list(range(3, 10))]


async def test_partial_response_failed_only_retries_just_the_failed_records():
    broker = one_partition(10)
    handler = Handler(reply=failing(3, 6))
    await run(handler, broker, {"partial_retry": "failed_only"}, batch_size=10)
    assert handler.calls == [list(range(10)), [3, 6]]


async def test_partial_response_may_name_the_records_themselves():
    broker = one_partition(4)
    handler = Handler(reply=lambda batch, n: [batch.records[2]] if n == 1 else [])
    await run(handler, broker, {"partial_retry": "failed_only"}, batch_size=4)
    assert handler.calls == [[0, 1, 2, 3], [2]]


def first_failure_only(poison: set[int]):
    """A handler as AWS documents one for streams: it stops at the first record it cannot
    process and names only that one (Lambda retries from there); the rest it never saw."""
    seen: list[int] = []

    def reply(batch, n):
        for r in batch.records:
            if r.offset in poison:
                return [r.offset]
            seen.append(r.offset)
        return []

    return reply, seen


async def test_when_retries_run_out_the_first_failed_record_is_given_up_and_the_rest_tried_again():
    broker = one_partition(6)
    reply, seen = first_failure_only({4})
    handler = Handler(reply=reply)
    dlq = RecordingDestination()
    errors = {"maximum_retry_attempts": 1, "partial_retry": "from_first_failure"}
    await run(handler, broker, errors, batch_size=6, destination=dlq)
    assert handler.calls == [list(range(6)), [4, 5], [5]]
    assert dlq.offsets() == [4]
    assert seen == [0, 1, 2, 3, 5]  # 5 was processed: it was never reached before


async def test_a_handler_that_stops_at_the_first_failure_loses_nothing_when_retries_run_out():
    """Each record is processed by the handler or is in the on-failure destination, however
    the poison records lie in the batch (before, what followed a given-up record was
    committed unprocessed)."""
    broker = one_partition(20)
    poison = {3, 4, 11, 19}
    reply, seen = first_failure_only(poison)
    dlq = RecordingDestination()
    errors = {"maximum_retry_attempts": 2, "partial_retry": "from_first_failure"}
    await run(Handler(reply=reply), broker, errors, batch_size=20, destination=dlq)
    assert sorted(set(seen)) == sorted(set(range(20)) - poison)
    assert dlq.offsets() == sorted(poison)


async def test_failed_only_gives_up_every_reported_record_and_keeps_the_rest_done():
    broker = one_partition(6)
    handler = Handler(
        reply=lambda batch, n: [r.offset for r in batch.records if r.offset in (1, 4)]
    )
    dlq = RecordingDestination()
    errors = {"maximum_retry_attempts": 1, "partial_retry": "failed_only"}
    await run(handler, broker, errors, batch_size=6, destination=dlq)
    assert handler.calls == [list(range(6)), [1, 4]]
    assert dlq.offsets() == [1, 4]


@pytest.mark.parametrize("bad", [[999], [None], ["3"], "3", {"x": 1}])
async def test_an_unknown_or_malformed_item_fails_the_whole_invocation(bad):
    broker = one_partition(4)
    handler = Handler(reply=lambda batch, n: bad if n == 1 else None)
    errors = {"bisect_batch_on_function_error": False}
    await run(handler, broker, errors, batch_size=4)
    assert handler.calls == [[0, 1, 2, 3], [0, 1, 2, 3]]


async def test_partial_response_is_ignored_when_reporting_is_off():
    broker = one_partition(4)
    handler = Handler(reply=failing(1))
    await run(handler, broker, {"report_batch_item_failures": False}, batch_size=4)
    assert handler.calls == [[0, 1, 2, 3]]


async def test_a_destination_that_is_down_holds_the_partition_until_it_recovers():
    broker = one_partition(8)
    handler = Handler(poison={1})
    dlq = RecordingDestination()
    dlq.down = True
    settings = {
        "batching": {"batch_size": 4},
        "errors": {"bisect_batch_on_function_error": False, "maximum_retry_attempts": 0},
    }
    async with running_worker(handler, broker, [TOPIC], settings, destination=dlq) as w:
        await wait_until(lambda: dlq.refused >= 3)
        assert broker.committed("test", TOPIC, 0) is None  # nothing past the failed batch
        assert handler.calls == [[0, 1, 2, 3]]  # and the partition did not move on
        dlq.down = False
        await wait_until(lambda: fully_committed(broker, "test", [TOPIC]))
        failures = w.metrics.destination_failures.labels("memory", dlq.name)._value.get()
    assert dlq.offsets() == [0, 1, 2, 3]
    assert failures == dlq.refused


async def test_without_a_destination_given_up_records_are_dropped_and_counted():
    broker = one_partition(3)
    handler = Handler(poison={1})
    metrics = Metrics()
    errors = {"maximum_retry_attempts": 0}
    # Taken before the run: the series leave the registry with the partition at the stop.
    dropped = metrics.records_dropped.labels("memory", "t-0", "retries_exhausted")
    dead_lettered = metrics.records_dead_lettered.labels("memory", "t-0")
    await run(handler, broker, errors, batch_size=3, metrics=metrics)
    assert dropped.value == 1
    assert dead_lettered.value == 0
