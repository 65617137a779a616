"""Adversarial review of batch.send: memory held by outputs, hostile send() arguments,
and the slots of handler.max_concurrency, on the memory broker."""

import asyncio

import pytest

from worker.testing import MemoryBroker, MemoryOutputs, fully_committed, running_worker, wait_until

OUTPUT_BYTES = 10_000


def _broker(records: int) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.create_topic("out", 1)
    for i in range(records):
        broker.produce("t", b"%d" % i, partition=0)
    return broker


async def test_outputs_waiting_for_their_acks_count_against_the_partitions_buffer_bytes():
    """The output topic refuses writes: the handled records' outputs wait in memory for
    the checkpoint. They must pause the partition like buffered records do
    (runtime.max_buffered_bytes), not pile up until max_buffered_records are handled."""
    broker = _broker(2000)
    sink = MemoryOutputs(broker)
    sink.fail = True
    handled = []

    async def handler(batch):
        for r in batch.records:
            batch.send("out", b"x" * OUTPUT_BYTES, key=r.value)
        handled.extend(r.value for r in batch.records)

    limit = 64 * 1024
    settings = {
        "outputs": {"topics": ["out"]},
        "batching": {"batch_size": 10},
        "runtime": {"max_buffered_bytes": limit},
    }
    async with running_worker(handler, broker, ["t"], settings, outputs=sink) as w:
        w.source.max_records = 20
        await wait_until(lambda: w.partition(("t", 0)) is not None)
        p = w.partition(("t", 0))
        await wait_until(lambda: (p.paused and p.unfinished_records == 0) or len(handled) == 2000)
        # Held: the limit's worth of outputs, plus those of the records already buffered
        # when it was crossed (64 KiB of tiny records at their per-record overhead: ~220);
        # not those of every record up to max_buffered_records (all 2000 here).
        assert p.paused and len(handled) <= 400, len(handled)
        sink.fail = False
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert sorted(r.key for r in broker.topics["out"][0]) == sorted(b"%d" % i for i in range(2000))


async def test_a_lane_batch_starting_at_the_low_watermark_holds_the_checkpoint_before_it():
    """Key lanes: lane B's batch [9..13] starts at the last record of a finished segment
    (the low watermark is 9) while lane C holds the next segment. A checkpoint at 9 would
    commit record 9 while its output waits with the rest of B's batch: it must stop at 8."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.create_topic("out", 1)
    a, b, c = b"k5", b"k1", b"k0"  # lanes 0, 1 and 3 of 4
    gate_b, gate_c = asyncio.Event(), asyncio.Event()
    in_b, in_c = asyncio.Event(), asyncio.Event()

    async def handler(batch):
        offsets = [r.offset for r in batch.records]
        if 3 in offsets:
            in_b.set()
            await gate_b.wait()
        if 14 in offsets:
            in_c.set()
            await gate_c.wait()
        for r in batch.records:
            batch.send("out", b"%d" % r.offset, record=r)
        done.update(offsets)

    done: set[int] = set()
    settings = {
        "outputs": {"topics": ["out"]},
        "handler": {"parallelization_factor": 4},
        "batching": {"batch_size": 5, "maximum_batching_window_ms": 0},
    }

    def produce(keys):
        for k in keys:
            broker.produce("t", b"x", key=k, partition=0)

    async with running_worker(handler, broker, ["t"], settings) as w:
        w.source.max_records = 5  # a fetch is a segment
        produce([a, a, a, b, a])  # 0..4: lane B's [3] is held
        await in_b.wait()
        p = w.partition(("t", 0))
        produce([a, a, a, a, b])  # 5..9: lane A handles 5..8, B's [9] waits behind [3]
        await wait_until(lambda: {5, 6, 7, 8} <= done)
        produce([b, b, b, b, c])  # 10..14: lane C holds [14]; B has [9..13] waiting
        await in_c.wait()
        await wait_until(lambda: p.buffered_records == 5)
        gate_b.set()  # [3] ends (0..4 commit), then B runs [9..13]: segment 5..9 is done
        try:
            await wait_until(lambda: 13 in done and p.commit_point() is None
                             and p.committed is not None)  # fmt: skip
            committed = broker.committed("test", "t", 0)
            out = {int(r.value) for r in broker.topics["out"][0]}
            assert committed == 9  # position 8: not inside B's batch
            assert set(range(committed)) <= out
        finally:
            gate_c.set()  # a failure does not wait out the shutdown deadline on lane C
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert sorted(int(r.value) for r in broker.topics["out"][0]) == list(range(15))


@pytest.mark.parametrize("concurrency", ["async", "thread"])
@pytest.mark.parametrize(
    "bad",
    [
        {"headers": [("only-a-name",)]},
        {"headers": "not-pairs"},
        {"headers": {"h": 5}},
        {"key": 5},
        {"value": object()},
        {"value": ["list"]},
    ],
    ids=["header-1-tuple", "header-str", "header-int", "key-int", "value-object", "value-list"],
)
async def test_a_send_with_bad_arguments_fails_only_its_invoke(concurrency, bad):
    broker = _broker(20)
    calls = []

    def body(batch):
        calls.append(len(batch.records))
        for r in batch.records:
            batch.send("out", r.value, key=r.value)
        if len(calls) == 1:  # after good sends: they go with the failed invoke
            batch.send(
                "out", bad.get("value", b"v"), key=bad.get("key"), headers=bad.get("headers")
            )

    async def async_handler(batch):
        body(batch)

    settings = {
        "outputs": {"topics": ["out"]},
        "handler": {"concurrency": concurrency},
        "batching": {"batch_size": 20},
        "errors": {"retry_backoff_ms": [1, 2]},
    }
    handler = async_handler if concurrency == "async" else body
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        assert w.metrics.outputs.discarded.labels("memory")._value.get() == 20
    assert calls[0] == 20 and len(calls) >= 2  # tried again (bisected, by default)
    assert sorted(r.value for r in broker.topics["out"][0]) == sorted(b"%d" % i for i in range(20))


async def test_an_output_too_large_to_produce_fails_its_invoke_and_is_dead_lettered():
    """An output over outputs.max_message_bytes could never be produced: every commit
    round would fail and the partition would never commit again. Refused at send, its
    record goes the failure path (dead-lettered) and the rest commit with their outputs."""
    from tests.unit.test_failure_policy import RecordingDestination

    broker = _broker(20)
    dlq = RecordingDestination()

    async def handler(batch):
        for r in batch.records:
            big = r.value == b"7"
            batch.send("out", b"x" * 2_000_000 if big else r.value, record=r)

    settings = {
        "outputs": {"topics": ["out"]},
        "batching": {"batch_size": 5},
        "errors": {"maximum_retry_attempts": 0, "retry_backoff_ms": [1, 2]},
    }
    async with running_worker(handler, broker, ["t"], settings, destination=dlq):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert [r.value for e in dlq.events for r in e.records] == [b"7"]
    assert "max_message_bytes" in dlq.events[0].error_message
    out = sorted(r.value for r in broker.topics["out"][0])
    assert out == sorted(b"%d" % i for i in range(20) if i != 7)


def test_every_outputs_problem_of_a_config_is_its_own_line(tmp_path):
    from worker.config_load import ConfigError, load_config

    path = tmp_path / "w.toml"
    path.write_text(
        '[source]\nkind="kinesis"\nstream_name="s"\n[handler]\ntarget="m:f"\n'
        'style="lambda"\nconcurrency="process"\n'
        '[outputs]\ntopics=["out"]\nexactly_once=true\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = err.value.problems
    assert len(lines) == 4, lines  # lambda style, process, exactly_once, no servers
    assert sum(line.startswith("outputs.topics:") for line in lines) == 2
    assert any(line.startswith("outputs.exactly_once:") for line in lines)
    assert any(line.startswith("outputs.bootstrap_servers:") for line in lines)


async def test_a_send_after_the_handler_returned_raises_instead_of_vanishing():
    """A handler that leaves a task behind which sends later: that output was silently
    dropped (the invoke's outputs were taken when it returned). It must raise there."""
    broker = _broker(5)
    late: list[BaseException | None] = []
    tasks = []

    async def handler(batch):
        async def later():
            await asyncio.sleep(0)
            try:
                batch.send("out", b"late")
                late.append(None)
            except RuntimeError as exc:
                late.append(exc)

        tasks.append(asyncio.ensure_future(later()))
        for r in batch.records:
            batch.send("out", r.value)

    async with running_worker(handler, broker, ["t"], {"outputs": {"topics": ["out"]}}):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        await asyncio.gather(*tasks)
    assert late and all(isinstance(e, RuntimeError) for e in late), late
    assert b"late" not in [r.value for r in broker.topics["out"][0]]


@pytest.mark.parametrize("concurrency", ["async", "thread"])
async def test_timed_out_calls_give_their_max_concurrency_slot_back(concurrency):
    """One slot, every first call of a batch past its timeout (a thread runs on, then
    returns; a coroutine is cancelled): the retries get the slot, nothing stalls, and a
    timed-out call's outputs never appear."""
    import threading
    import time

    broker = _broker(12)
    seen: set[bytes] = set()
    lock = threading.Lock()

    def body(batch):
        first = batch.records[0].value
        with lock:
            again, _ = first in seen, seen.add(first)
        for r in batch.records:
            batch.send("out", b"ok" if again else b"timed-out", key=r.value)
        return again

    async def async_handler(batch):
        if not body(batch):
            await asyncio.sleep(5)

    def thread_handler(batch):
        if not body(batch):
            time.sleep(0.4)

    settings = {
        "outputs": {"topics": ["out"]},
        "handler": {"max_concurrency": 1, "timeout_s": 0.1, "concurrency": concurrency},
        "batching": {"batch_size": 4},
        "errors": {"retry_backoff_ms": [1, 2], "bisect_batch_on_function_error": False},
    }
    handler = async_handler if concurrency == "async" else thread_handler
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), 20)
    out = broker.topics["out"][0]
    assert sorted(r.key for r in out) == sorted(b"%d" % i for i in range(12))
    assert {r.value for r in out} == {b"ok"}
