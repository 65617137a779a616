"""Odd handler output is a failed invocation that goes the failure path, never a dead worker.

Each case once ended a key lane with an exception, and the worker with exit status 1:
a generator that raises while being read, an unhashable `itemIdentifier`, a window
state that is not JSON, an error message that cannot be encoded as UTF-8.
"""

import time

import orjson
import pytest

from tests.unit.test_failure_policy import RecordingDestination
from worker.destinations.base import FailureEvent
from worker.destinations.file import FileDestination
from worker.lambda_compat.responses import kafka_failed_indexes, kinesis_failed_indexes
from worker.testing import MemoryBroker, fully_committed, make_batch, running_worker, wait_until

GIVE_UP_AT_ONCE = {"maximum_retry_attempts": 0, "bisect_batch_on_function_error": False}


def broker_of(n: int, timestamp_ms: int | None = None) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(n):
        broker.produce("t", b"%d" % i, partition=0, timestamp_ms=timestamp_ms)
    return broker


async def dead_lettered_by(handler, settings, n: int = 3, timestamp_ms=None) -> list[FailureEvent]:
    """Run the handler on n records until all are committed; the worker must stay up."""
    broker = broker_of(n, timestamp_ms)
    dlq = RecordingDestination()
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]) or w.exit_code != 0)
        assert w.exit_code == 0 and w.tasks.crashed is None
    return dlq.events


def raising_generator(batch):
    yield batch.records[0]
    raise RuntimeError("broken while reading the response")


@pytest.mark.parametrize("concurrency", ["async", "thread", "process"])
async def test_a_native_handler_returning_a_generator_that_raises_fails_its_batch(concurrency):
    settings = {
        "errors": GIVE_UP_AT_ONCE,
        "handler": {"concurrency": concurrency, "processes": 1,
                    "target": "tests.unit.test_odd_handler_output:raising_generator"},
    }  # fmt: skip
    if concurrency == "async":

        async def handler(batch):
            return raising_generator(batch)
    else:
        handler = raising_generator
    events = await dead_lettered_by(handler, settings)
    assert [r.offset for e in events for r in e.records] == [0, 1, 2]
    assert "broken while reading" in events[0].error_message


def test_a_partial_response_whose_iteration_raises_is_an_invalid_response():
    class Exploding:
        def __iter__(self):
            raise OSError("no")

    from worker.handling.partial import InvalidResponse, failed_indexes

    with pytest.raises(InvalidResponse):
        failed_indexes(Exploding(), make_batch([b"1"]).records)


@pytest.mark.parametrize(
    "ident",
    [
        [1, 2],
        [["t-0"]],
        {"partition": ["t-0"], "offset": 0},
        {"partition": "t-0", "offset": [0]},
        {"partition": "t-0", "offset": {"n": 0}},
        {"partition": "t-0", "offset": 0, "extra": {"a": []}},
    ],
)
def test_an_unhashable_kafka_item_identifier_is_an_invalid_response(ident):
    from worker.handling.partial import InvalidResponse

    records = make_batch([b"1"], topic="t").records
    with pytest.raises(InvalidResponse):
        kafka_failed_indexes({"batchItemFailures": [{"itemIdentifier": ident}]}, records)
    with pytest.raises(InvalidResponse):
        kinesis_failed_indexes({"batchItemFailures": [{"itemIdentifier": ident}]}, records)


async def test_a_lambda_response_with_an_unhashable_identifier_fails_its_batch():
    def handler(event, context):
        return {"batchItemFailures": [{"itemIdentifier": {"partition": ["t-0"], "offset": 0}}]}

    settings = {"errors": GIVE_UP_AT_ONCE, "handler": {"style": "lambda"}}
    events = await dead_lettered_by(handler, settings)
    assert events[0].error_type == "InvalidResponse"
    assert [r.offset for e in events for r in e.records] == [0, 1, 2]


WINDOW = {"batching": {"tumbling_window_s": 60}, "handler": {"style": "lambda"}}


@pytest.mark.parametrize("state", [{"seen": {1, 2}}, {"raw": b"bytes"}, {"o": object()}])
async def test_a_window_state_that_is_not_json_fails_the_invoke_and_is_dead_lettered(state):
    def handler(event, context):
        return {"state": {} if event["isFinalInvokeForWindow"] else state}

    old_ms = int(time.time() * 1000) - 180_000
    settings = {**WINDOW, "errors": GIVE_UP_AT_ONCE}
    events = await dead_lettered_by(handler, settings, timestamp_ms=old_ms)
    assert [r.offset for e in events for r in e.records] == [0, 1, 2]
    assert events[0].error_type == "InvalidResponse" and "JSON" in events[0].error_message


async def test_a_window_state_with_non_string_keys_comes_back_as_json_would_give_it():
    """Lambda keeps the state as JSON: keys that JSON writes as strings come back as strings."""
    seen = []

    def handler(event, context):
        seen.append(event["state"])
        return {"state": {7: len(seen)}}

    old_ms = int(time.time() * 1000) - 180_000
    settings = {**WINDOW, "batching": {"tumbling_window_s": 60, "batch_size": 1}}
    events = await dead_lettered_by(handler, settings, n=2, timestamp_ms=old_ms)
    assert events == []
    assert seen == [{}, {"7": 1}, {"7": 2}]  # two invokes, then the final one


async def test_a_handler_error_with_a_lone_surrogate_is_dead_lettered_to_a_file(tmp_path):
    path = tmp_path / "dlq.jsonl"

    async def handler(batch):
        raise ValueError("bad byte \udcff in reading")

    broker = broker_of(2)
    destination = FileDestination(str(path))
    settings = {"errors": GIVE_UP_AT_ONCE}
    async with running_worker(handler, broker, ["t"], settings, destination=destination) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]) or w.exit_code != 0)
        assert w.exit_code == 0 and w.tasks.crashed is None
    (line,) = path.read_bytes().splitlines()
    document = orjson.loads(line)
    assert document["error"]["message"] == "bad byte \\udcff in reading"
    assert "\\udcff" in document["error"]["traceback"]
    assert [r["offset"] for r in document["records"]] == [0, 1]
