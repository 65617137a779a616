"""Adversarial review of batch.send: memory held by outputs, hostile send() arguments,
and the slots of handler.max_concurrency, on the memory broker."""

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
