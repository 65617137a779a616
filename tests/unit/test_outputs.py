"""batch.send on the memory broker: outputs belong to their invoke and go out only with
the checkpoint that covers their input."""

import asyncio

import pytest

from worker.testing import (
    MemoryBroker,
    MemoryOutputs,
    fully_committed,
    make_batch,
    running_worker,
    wait_until,
)


def _broker(records: int, partitions: int = 1) -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", partitions)
    broker.create_topic("out", 1)
    for i in range(records):
        broker.produce("t", b"%d" % i, key=b"k%d" % (i % 7), partition=i % partitions)
    return broker


def _outputs(broker: MemoryBroker) -> list[bytes]:
    return [r.value for r in broker.topics["out"][0]]


def _settings(**handler) -> dict:
    return {
        "outputs": {"topics": ["out"]},
        "handler": handler,
        "batching": {"batch_size": 10},
        "errors": {"maximum_retry_attempts": 1, "retry_backoff_ms": [1, 2]},
    }


async def test_a_poison_records_outputs_never_appear_and_its_batch_mates_appear_once():
    broker = _broker(100, partitions=2)
    poison = {b"37", b"38"}

    async def handler(batch):
        for r in batch.records:
            batch.send("out", b"o" + r.value, key=r.key)
        if any(r.value in poison for r in batch.records):
            raise ValueError("poison")

    async with running_worker(handler, broker, ["t"], _settings()) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        discarded = w.metrics.outputs.discarded.labels("memory")._value.get()
    expected = sorted(b"o%d" % i for i in range(100) if b"%d" % i not in poison)
    assert sorted(_outputs(broker)) == expected  # each once, the poison's never
    assert discarded > 0  # the failed invokes' outputs, counted


async def test_nothing_is_committed_while_outputs_are_not_acknowledged():
    broker = _broker(50)
    sink = MemoryOutputs(broker)
    sink.fail = True

    async def handler(batch):
        for r in batch.records:
            batch.send("out", r.value)

    async with running_worker(handler, broker, ["t"], _settings(), outputs=sink):
        await wait_until(lambda: sink.failures >= 3)
        assert broker.committed("test", "t", 0) is None and _outputs(broker) == []
        sink.fail = False
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert _outputs(broker) == [b"%d" % i for i in range(50)]  # once each, in order


async def test_a_partition_whose_checkpoint_fails_alone_holds_back_only_itself():
    """Exactly once fails a round per partition (its own transaction): the others are
    committed; the failed one is neither committed nor shown committed, and is retried."""
    broker = _broker(200, partitions=2)
    sink = MemoryOutputs(broker)
    sink.refuse = {("t", 1)}

    async def handler(batch):
        for r in batch.records:
            batch.send("out", r.value)

    async with running_worker(handler, broker, ["t"], _settings(), outputs=sink) as w:
        await wait_until(lambda: broker.committed("test", "t", 0) == 100 and sink.failures >= 3)
        assert broker.committed("test", "t", 1) is None
        assert w.partition(("t", 1)).committed is None
        assert sorted(int(v) for v in _outputs(broker)) == list(range(0, 200, 2))
        sink.refuse = set()
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert sorted(int(v) for v in _outputs(broker)) == list(range(200))  # each once


async def test_outputs_of_a_lane_ahead_of_the_low_watermark_wait_for_it():
    broker = _broker(0)
    gate = asyncio.Event()
    busy, stuck_key = [b"k5", b"k1", b"k4"], b"k0"  # lanes 0, 1, 2; k0 has lane 3

    async def handler(batch):
        if any(r.offset == 53 for r in batch.records):
            await gate.wait()
        for r in batch.records:
            batch.send("out", b"%d" % r.offset, record=r)

    settings = _settings(parallelization_factor=4)
    settings["batching"] = {"batch_size": 5}
    async with running_worker(handler, broker, ["t"], settings) as w:
        w.source.max_records = 10
        for i in range(100):
            broker.produce("t", b"x", key=stuck_key if i == 53 else busy[i % 3], partition=0)
        await wait_until(lambda: w.partition(("t", 0)) is not None)
        partition = w.partition(("t", 0))
        # All but the stuck segment [50..54] finished, and the committer has caught up.
        await wait_until(lambda: partition.unfinished_records == 5
                         and partition.commit_point() is None and partition.committed)  # fmt: skip
        committed, out = broker.committed("test", "t", 0), [int(v) for v in _outputs(broker)]
        # Everything committed has its outputs out, each once; nothing past the low
        # watermark (50) is out although lanes 0..2 handled all of it; the commit stops
        # before a lane's batch it would cut through, so its outputs go with all of it.
        assert 0 < committed <= 50 and set(range(committed)) <= set(out)
        assert max(out) < 50 and len(set(out)) == len(out)
        gate.set()
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert sorted(int(v) for v in _outputs(broker)) == list(range(100))


async def test_a_partial_failure_keeps_the_outputs_of_the_records_that_succeeded():
    broker = _broker(10)
    calls = []

    async def handler(batch):
        calls.append(len(batch.records))
        failed = [r for r in batch.records if r.value == b"4" and len(calls) == 1]
        for r in batch.records:
            batch.send("out", b"r" + r.value, record=r)
        batch.send("out", b"batch")
        return failed or None

    settings = _settings()
    settings["errors"]["partial_retry"] = "failed_only"
    async with running_worker(handler, broker, ["t"], settings):
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    assert calls == [10, 1]
    assert sorted(_outputs(broker)) == sorted(
        [b"batch", b"batch"] + [b"r%d" % i for i in range(10)]
    )


def test_send_checks_the_topic_and_the_types():
    batch = make_batch([b"v"], sends_to=["out"])
    batch.send("out", "text", key="k", headers={"h": "x"})
    assert [(o.value, o.key, o.headers) for o in batch.outbox.items] == [
        (b"text", b"k", [("h", b"x")])
    ]
    with pytest.raises(ValueError, match=r"not in outputs\.topics"):
        batch.send("typo", b"v")
    with pytest.raises(TypeError, match="value must be bytes"):
        batch.send("out", 5)
    with pytest.raises(RuntimeError, match=r"\[outputs\]"):
        make_batch([b"v"]).send("out", b"v")


@pytest.mark.parametrize(
    ("tree", "problem"),
    [
        ({"handler": {"style": "lambda"}}, "batch.send is for native handlers"),
        ({"handler": {"concurrency": "process"}}, "needs handler.concurrency"),
        ({"source": {"topics": ["out"]}}, "must not be a source topic"),
        ({"source": {"kind": "kinesis", "stream_name": "s"}}, "outputs.bootstrap_servers"),
        ({"source": {"kind": "memory"}, "outputs": {"exactly_once": True}}, "a Kafka source"),
        (
            {"source": {"client": "librdkafka"}, "outputs": {"exactly_once": True}},
            "needs source.client = 'aiokafka'",
        ),
    ],
)
def test_outputs_settings_that_cannot_work_are_config_errors(tree, problem):
    from pydantic import ValidationError

    from worker.config import WorkerConfig

    config = {"source": {"topics": ["t"]}, "outputs": {"topics": ["out"]}}
    for section, values in tree.items():
        config[section] = {**config.get(section, {}), **values}
    if config["source"].get("kind") in ("kinesis", "memory"):
        config["source"].pop("topics")
    with pytest.raises(ValidationError, match=problem):
        WorkerConfig.model_validate(config)
