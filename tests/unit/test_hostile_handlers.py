"""Handlers that change what they were given, or hand back work they did not do.

Each case committed records that were neither handled nor dead-lettered, or counted a
window's records twice, on the memory source:
- a native handler that emptied or popped from `batch.records` and then failed changed
  the very list the failure policy bisected and gave up: a handler popping the first
  record of 4, with bisect on, had 3 of them committed and only the last dead-lettered
  (clearing the list ended the lane instead);
- an `async def` handler returning a coroutine it never awaited (a missing `await`)
  counted as a success for a Lambda-style handler, or with report_batch_item_failures off:
  4 of 4 records committed, the coroutine never run;
- a tumbling-window handler that changed `event["state"]` in place and then failed gave
  its retry the changed state: 4 records counted as 8.
"""

import gc
import time
import warnings

import pytest

from tests.unit.test_failure_policy import RecordingDestination
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

GIVE_UP_AT_ONCE = {"maximum_retry_attempts": 0, "retry_backoff_ms": [1, 5]}


async def run_until_committed(handler, settings, n=4, timestamp_ms=None):
    """The worker on n records until all are committed; it must stay up. The DLQ's offsets."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(n):
        broker.produce("t", b'{"i": %d}' % i, partition=0, timestamp_ms=timestamp_ms)
    dlq = RecordingDestination()
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]) or w.exit_code != 0)
        assert w.exit_code == 0 and w.tasks.crashed is None
    return sorted(dlq.offsets())


def clears(batch):
    batch.records.clear()
    raise RuntimeError("failed after emptying its records")


def pops_first(batch):
    batch.records.pop(0)
    raise RuntimeError("failed after popping a record")


def reverses(batch):
    batch.records.reverse()
    return [batch.records[0]]  # the last record failed: every other one succeeded


@pytest.mark.parametrize("concurrency", ["async", "thread"])
@pytest.mark.parametrize("mutate", [clears, pops_first])
@pytest.mark.parametrize("bisect", [True, False])
async def test_a_handler_that_changes_its_records_list_and_fails_has_all_of_them_dead_lettered(
    concurrency, mutate, bisect
):
    handler = mutate
    if concurrency == "async":

        async def handler(batch):
            return mutate(batch)

    settings = {
        "errors": {**GIVE_UP_AT_ONCE, "bisect_batch_on_function_error": bisect},
        "handler": {"concurrency": concurrency},
    }
    assert await run_until_committed(handler, settings) == [0, 1, 2, 3]


async def test_a_handler_that_reorders_its_records_is_judged_by_the_records_it_names():
    settings = {"errors": GIVE_UP_AT_ONCE, "handler": {"concurrency": "thread"}}
    assert await run_until_committed(reverses, settings) == [3]


ran = []


async def the_work(event):
    ran.append(event)


async def lambda_missing_await(event, context):
    return the_work(event)


async def native_missing_await(batch):
    return the_work(batch)


@pytest.mark.parametrize(
    "handler, settings",
    [
        (lambda_missing_await, {"handler": {"style": "lambda"}}),
        (native_missing_await, {"errors": {"report_batch_item_failures": False}}),
        (native_missing_await, {}),
    ],
    ids=["lambda", "native-report-off", "native"],
)
async def test_an_async_handler_returning_a_coroutine_it_did_not_await_fails_its_batch(
    handler, settings
):
    ran.clear()
    errors = {**GIVE_UP_AT_ONCE, "bisect_batch_on_function_error": False,
              **settings.get("errors", {})}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert await run_until_committed(handler, {**settings, "errors": errors}) == [0, 1, 2, 3]
        gc.collect()  # an unawaited coroutine warns when it is collected
    assert ran == []
    assert not [w for w in caught if "never awaited" in str(w.message)]  # it was closed


async def test_a_window_state_changed_in_place_by_a_failed_invoke_is_not_what_its_retry_gets():
    """Lambda sends a retry the state it kept; the failed invoke's edits are not kept."""
    seen = []

    def handler(event, context):
        state = event["state"]
        seen.append((event["isFinalInvokeForWindow"], dict(state)))
        if event["isFinalInvokeForWindow"]:
            return {"state": {}}
        state["n"] = state.get("n", 0) + len(event["records"]["t-0"])
        if len(seen) == 1:
            raise RuntimeError("failed after counting")
        return {"state": state}

    old_ms = int(time.time() * 1000) - 180_000  # a window long closed: it closes at once
    settings = {"batching": {"tumbling_window_s": 60}, "handler": {"style": "lambda"},
                "errors": {"retry_backoff_ms": [1, 5]}}  # fmt: skip
    assert await run_until_committed(handler, settings, timestamp_ms=old_ms) == []
    assert seen == [(False, {}), (False, {}), (True, {"n": 4})]
