"""Tumbling windows fed a record whose timestamp no calendar can show.

A Kafka producer sets CreateTime freely (any int64; the broker's default
message.timestamp.difference.max.ms accepts all). Bad input must go through the failure
path; here the window's event cannot even be built (`datetime.fromtimestamp` overflows)
and the lane task dies, which ends the whole worker with status 1 on every restart.
"""

import time

from worker.testing import MemoryBroker, running_worker, wait_until

WINDOW = {"batching": {"tumbling_window_s": 60, "batch_size": 10}, "handler": {"style": "lambda"}}


async def test_a_record_with_a_far_future_timestamp_does_not_crash_the_worker():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    now_ms = int(time.time() * 1000)
    broker.produce("t", b"{}", partition=0, timestamp_ms=now_ms)
    broker.produce("t", b"{}", partition=0, timestamp_ms=2**62)  # year ~146 million
    broker.produce("t", b"{}", partition=0, timestamp_ms=now_ms + 1)

    calls = []

    def handler(event, context):
        calls.append(event["isFinalInvokeForWindow"])
        return {"state": {}}

    settings = {**WINDOW, "errors": {"maximum_retry_attempts": 0}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        # The far-future record is windowed as now (counted as early data): all three
        # are invoked in the open window, and nothing crashed.
        await wait_until(
            lambda: (
                w.should_exit.is_set()
                or ((p := w.partition(("t", 0))) is not None and p.buffered_records == 0 and calls)
            ),
            timeout_s=5,
        )
        crashed, code = w.tasks.crashed, w.exit_code
    assert crashed is None, crashed
    assert code == 0


def test_window_bounds_no_calendar_can_show_are_shown_as_epoch_milliseconds():
    from worker.lambda_compat.windows import _iso

    assert _iso(0) == "1970-01-01T00:00:00Z"
    assert _iso(2**62) == str(2**62)
