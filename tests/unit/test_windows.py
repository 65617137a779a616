"""Tumbling windows: per-device one-minute averages over IoT telemetry, exactly."""

import asyncio
import json
import random
import time
from collections import defaultdict
from datetime import UTC, datetime

from handlers.lambda_iot_windows import averages
from handlers.lambda_iot_windows import lambda_handler as iot_window_handler
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until

WINDOW = {"batching": {"tumbling_window_s": 60, "batch_size": 7}, "handler": {"style": "lambda"}}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_per_device_one_minute_averages_match_the_exact_expected_result():
    broker = MemoryBroker()
    broker.create_topic("telemetry", 1)
    rng = random.Random(3)
    base = (int(time.time()) // 60 - 5) * 60_000  # five minutes ago, on a minute boundary
    expected: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for minute in range(3):
        for n in range(25):
            device = f"dev-{n % 4}"
            temp = round(rng.uniform(15, 35), 2)
            ts = base + minute * 60_000 + n * 2_000
            value = {"device_id": device, "seq": n, "metrics": {"temperature": temp}}
            broker.produce("telemetry", json.dumps(value).encode(), partition=0, timestamp_ms=ts)
            expected[iso(base + minute * 60_000)][device].append(temp)

    finals = []

    def handler(event, context):
        response = iot_window_handler(event, context)
        if event["isFinalInvokeForWindow"]:
            assert event["records"] == {} or all(not r for r in event["records"].values())
            finals.append((event["window"], event["isWindowTerminatedEarly"], event["shardId"],
                           averages(event["state"])))  # fmt: skip
        return response

    async with running_worker(handler, broker, ["telemetry"], WINDOW):
        await wait_until(lambda: fully_committed(broker, "test", ["telemetry"]))

    assert [f[0]["start"] for f in finals] == [iso(base + m * 60_000) for m in range(3)]
    assert [f[0]["end"] for f in finals] == [iso(base + (m + 1) * 60_000) for m in range(3)]
    for window, early, shard, got in finals:
        assert not early and shard == "telemetry-0"
        want = {d: round(sum(v) / len(v), 6) for d, v in expected[window["start"]].items()}
        assert got == want


async def test_a_window_is_committed_only_after_its_final_invoke_succeeds():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    now_ms = int(time.time() * 1000)
    for i in range(5):  # an open window: its end is a minute away
        broker.produce("t", b"{}", partition=0, timestamp_ms=now_ms + i)
    calls = []

    def handler(event, context):
        calls.append(event["isFinalInvokeForWindow"])
        return {"state": {"n": len(calls)}}

    async with running_worker(handler, broker, ["t"], WINDOW) as w:
        await wait_until(lambda: calls == [False])
        await asyncio.sleep(0)  # give a wrong commit every chance to happen
        assert broker.committed("test", "t", 0) is None
        assert w.partition(("t", 0)).stats().unfinished == 5  # held for the final invoke


async def test_state_over_one_megabyte_ends_the_window_early():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    now_ms = int(time.time() * 1000) - 120_000
    for i in range(3):
        broker.produce("t", b"{}", partition=0, timestamp_ms=now_ms + i)
    seen = []

    def handler(event, context):
        seen.append((event["isFinalInvokeForWindow"], event["isWindowTerminatedEarly"]))
        if event["isFinalInvokeForWindow"]:
            return {"state": {}}
        return {"state": {"blob": "x" * (1024 * 1024 + 1)}}

    settings = {**WINDOW, "batching": {"tumbling_window_s": 60, "batch_size": 3}}
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert seen[:2] == [(False, False), (True, True)]


async def test_a_window_invoke_without_state_is_a_failure_and_retried():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"{}", partition=0, timestamp_ms=int(time.time() * 1000) - 120_000)
    replies = [{"no": "state"}, {"state": {}}, {"state": {}}]

    def handler(event, context):
        return replies.pop(0)

    async with running_worker(handler, broker, ["t"], WINDOW) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        errors = w.metrics.batches.labels("memory", "t-0", "error").value
    assert errors == 1 and replies == []


async def test_a_window_whose_final_invoke_keeps_failing_is_never_committed():
    """Lambda stops the shard until the final invoke succeeds. The first version gave the
    final invoke up after the retries and committed the window: its result was lost."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    old_ms = int(time.time() * 1000) - 180_000  # a window long closed: it closes at once
    for i in range(5):
        broker.produce("t", b"{}", partition=0, timestamp_ms=old_ms + i)
    finals: list[bool] = []
    healed = asyncio.Event()

    def handler(event, context):
        if event["isFinalInvokeForWindow"]:
            finals.append(healed.is_set())
            if not healed.is_set():
                raise RuntimeError("cannot deliver the window's result")
        return {"state": {"n": 1}}

    settings = {**WINDOW, "errors": {"maximum_retry_attempts": 1, "retry_backoff_ms": [1, 5]}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: len(finals) >= 5)  # well past its retry limit of one
        assert broker.committed("test", "t", 0) is None
        dropped = [
            s.value
            for family in w.metrics.registry.collect()
            if family.name == "worker_records_dropped"
            for s in family.samples
        ]
        assert sum(dropped) == 0
        healed.set()
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert finals[-1] is True


async def test_windows_work_with_handler_processes():
    """The window and its state cross to the child with the batch; a final invoke carries
    no records (the first version's pack() lost the window and failed on an empty batch)."""
    broker = MemoryBroker()
    broker.create_topic("telemetry", 1)
    base = (int(time.time()) // 60 - 5) * 60_000
    for minute in range(2):
        for n in range(6):
            value = {"device_id": f"dev-{n % 2}", "seq": n, "metrics": {"temperature": 20.0}}
            broker.produce("telemetry", json.dumps(value).encode(), partition=0,
                           timestamp_ms=base + minute * 60_000 + n * 1000)  # fmt: skip
    settings = {
        **WINDOW,
        "handler": {"style": "lambda", "concurrency": "process", "processes": 1,
                    "target": "handlers.lambda_iot_windows:lambda_handler"},
        "errors": {"maximum_retry_attempts": 0},
    }  # fmt: skip
    async with running_worker(iot_window_handler, broker, ["telemetry"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["telemetry"]), timeout_s=60)
        failed = w.metrics.registry.get_sample_value(
            "worker_records_failed_total", {"source": "memory", "partition": "telemetry-0"}
        )
    assert not failed


async def test_a_far_future_record_is_windowed_as_now_and_the_partition_moves_on():
    """A record stamped a day ahead used to open a window a day ahead: every later record
    joined it (late data) and nothing was committed until the wall clock caught up."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    now_ms = int(time.time() * 1000)
    for ts in (now_ms - 10_000, now_ms + 86_400_000, now_ms - 9_000, now_ms - 8_000):
        broker.produce("t", b"{}", partition=0, timestamp_ms=ts)
    windows: dict[int, str] = {}

    def handler(event, context):
        for records in event["records"].values():
            for r in records:
                windows[r["offset"]] = event["window"]["start"]
        return {"state": {}}

    settings = {
        "batching": {"tumbling_window_s": 1, "batch_size": 10},
        "handler": {"style": "lambda"},
    }
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=15)
        early = w.metrics.window_early_records.labels("memory", "t-0").value
    assert early == 1
    assert sorted(windows) == [0, 1, 2, 3]  # nothing lost
    start = datetime.strptime(windows[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(start.timestamp() - now_ms / 1000) < 10  # its window is now, not a day ahead
