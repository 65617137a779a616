"""Tumbling windows with a filter: batches filtered to nothing while no window is open."""

import time

from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

SETTINGS = {
    "batching": {"tumbling_window_s": 60, "batch_size": 5},
    "handler": {"style": "lambda"},
    "filter": {"patterns": ['{"value": {"hot": [true]}}']},
}


async def test_records_filtered_while_no_window_is_open_are_committed():
    """Nothing matches, so no window ever opens: nothing holds these records back, yet
    each filtered batch is parked as 'pending its window's final invoke' for ever, its
    records count as unfinished and the commit watchdog eventually exits the worker
    (and its successor, on the same records)."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    now_ms = int(time.time() * 1000)
    for i in range(10):
        broker.produce("t", b'{"hot": false}', partition=0, timestamp_ms=now_ms + i)
    calls = []

    def handler(event, context):
        calls.append(event)
        return {"state": {}}

    async with running_worker(handler, broker, ["t"], SETTINGS) as w:
        try:
            await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=3)
        finally:
            stats = w.partition_stats()
            print("committed", broker.committed("test", "t", 0), "stats", stats)
    assert calls == []


async def test_records_filtered_after_a_window_closed_are_committed():
    """A window closes on its final invoke; what arrives after it and is all filtered out
    must not wait for a window that will only open with the next matching record."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    old = (int(time.time()) // 60 - 3) * 60_000  # a window long past its end
    broker.produce("t", b'{"hot": true}', partition=0, timestamp_ms=old)
    finals = []

    def handler(event, context):
        if event["isFinalInvokeForWindow"]:
            finals.append(event["window"])
        return {"state": {}}

    settings = {**SETTINGS, "batching": {"tumbling_window_s": 60, "batch_size": 1}}
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: len(finals) == 1)  # closed as idle (past end + grace)
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        for i in range(5):
            broker.produce("t", b'{"hot": false}', partition=0, timestamp_ms=old + 61_000 + i)
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=3)
