"""librdkafka: a batch that fails its CRC holds its partition at it (`librdkafka_corrupt`),
without a broker: the messages are what `consume()` returned on the real broker
(tests/integration/test_kafka_corrupt_batch): the batch's `_BAD_MSG` error, then, after
librdkafka's skip, records past it (the next batch, or the end after a reset)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message

from tests.unit.test_librdkafka_source import TP1, RecordingConsumer, started_source
from worker.sources.kafka import librdkafka_corrupt
from worker.sources.kafka.librdkafka_corrupt import BadBatches


def msg(partition: int, offset: int, error: Any = None) -> Message:
    """A message as `consume()` returns it (records and errors alike)."""
    return Message(topic="t", partition=partition, offset=offset, value=b"v", error=error)


def bad(partition: int, offset: int) -> Message:
    return msg(partition, offset, KafkaError(KafkaError._BAD_MSG, "failed CRC32C check"))


class Consumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def seek(self, tp: Any) -> None:
        self.calls.append(("seek", (tp.topic, tp.partition, tp.offset)))

    def pause(self, tps: list[Any]) -> None:
        self.calls.append(("pause", [(tp.topic, tp.partition) for tp in tps]))

    def resume(self, tps: list[Any]) -> None:
        self.calls.append(("resume", [(tp.topic, tp.partition) for tp in tps]))


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def test_records_after_a_bad_batch_are_dropped_and_the_partition_held_at_it(caplog):
    bb, consumer = BadBatches(Clock()), Consumer()
    messages = [msg(1, 0), msg(1, 1), msg(1, 2), msg(0, 7), bad(1, 3), msg(1, 6), msg(0, 8),
                msg(1, 9)]  # fmt: skip
    kept = bb.hold(consumer, messages)
    assert [(m.partition(), m.offset()) for m in kept] == [(1, 0), (1, 1), (1, 2), (0, 7), (0, 8)]
    assert consumer.calls == [("seek", ("t", 1, 3)), ("pause", [("t", 1)])]
    assert bb.held == {("t", 1)}
    (line,) = [r.getMessage() for r in caplog.records if "event=fetch_stuck" in r.getMessage()]
    assert "partition=t-1 offset=3 failures=1 " in line


def test_it_is_read_again_once_a_retry_and_warned_once_a_window(caplog):
    clock = Clock()
    bb, consumer = BadBatches(clock), Consumer()
    bb.hold(consumer, [bad(1, 3)])
    consumer.calls.clear()
    assert bb.hold(consumer, [msg(0, 1)])[0].offset() == 1
    assert consumer.calls == [] and bb.held == set()  # still paused: nothing to do
    clock.now += librdkafka_corrupt.RETRY_S
    bb.hold(consumer, [])
    assert consumer.calls == [("resume", [("t", 1)])]
    bb.hold(consumer, [bad(1, 3)])  # still bad: held again, not warned again
    clock.now += librdkafka_corrupt.WARN_S
    bb.hold(consumer, [bad(1, 3)])
    lines = [r.getMessage() for r in caplog.records if "event=fetch_stuck" in r.getMessage()]
    assert len(lines) == 2 and "failures=2 " in lines[1]  # since the last line


def test_messages_without_a_bad_batch_pass_untouched():
    bb, consumer = BadBatches(Clock()), Consumer()
    other = msg(0, 4, KafkaError(KafkaError._TRANSPORT, "broker down"))
    messages = [msg(0, 1), other]
    assert bb.hold(consumer, messages) is messages  # other errors go to the source as before
    assert consumer.calls == [] and bb.held == set()


class Fetching(RecordingConsumer):
    """`consume()` returns what the test gives once; seeks and pauses are recorded."""

    def __init__(self, messages: list[Any]) -> None:
        super().__init__()
        self.next, self.calls = messages, []

    def consume(self, count: int, timeout: float) -> list[Any]:
        out, self.next = self.next, []
        return out

    def seek(self, tp: Any) -> None:
        self.calls.append(("seek", (tp.topic, tp.partition, tp.offset)))

    def pause(self, tps: list[Any]) -> None:
        self.calls.append(("pause", [(tp.topic, tp.partition) for tp in tps]))


async def test_the_source_hands_out_nothing_past_a_bad_batch_and_holds_it():
    """The source's poll, as librdkafka gave it on the real broker: good records, the
    batch's error, then records past it (after its skip, or a reset to the end)."""
    source, _ = await started_source()

    def message(offset: int, **kw: Any) -> Message:
        return Message(topic="t", partition=1, offset=offset, value=b"v", timestamp=(1, 1), **kw)

    crc = KafkaError(KafkaError._BAD_MSG, "MessageSet at offset 3 failed CRC32C check")
    consumer = Fetching([message(0), message(1), message(2), message(3, error=crc),
                         message(6), message(9)])  # fmt: skip
    source._consumer = consumer  # type: ignore[assignment]
    chunks, errors, _, _, _ = source._poll(0)
    assert {tp: [r.offset for r in rs] for tp, rs in chunks.items()} == {TP1: [0, 1, 2]}
    assert errors == []  # said by its own warning, folded
    assert consumer.calls == [("seek", ("t", 1, 3)), ("pause", [("t", 1)])]


async def test_a_stuck_partition_is_read_again_after_its_wait_by_fetches_without_errors():
    """Once held, the partition is paused: every later fetch is of the other partitions,
    without errors, through the C pass that never calls `hold` with messages. Its retry
    must still come (before the fix it could not: the partition stalled for good)."""
    source, _ = await started_source()
    clock = Clock()
    source._bad = BadBatches(clock)
    crc = KafkaError(KafkaError._BAD_MSG, "MessageSet at offset 3 failed CRC32C check")
    consumer = Fetching([msg(1, 3, crc)])
    consumer.resume = lambda tps: consumer.calls.append(  # type: ignore[method-assign]
        ("resume", [(tp.topic, tp.partition) for tp in tps])
    )
    source._consumer = consumer  # type: ignore[assignment]
    source._poll(0)
    consumer.calls.clear()
    consumer.next = [msg(0, 1)]
    source._poll(0)
    assert consumer.calls == []  # not due yet
    clock.now += librdkafka_corrupt.RETRY_S
    consumer.next = [msg(0, 2)]
    chunks, *_ = source._poll(0)
    assert [r.offset for rs in chunks.values() for r in rs] == [2]
    assert consumer.calls == [("resume", [("t", 1)])]


def test_a_retry_never_resumes_a_partition_the_pipeline_paused():
    """The pipeline paused the partition (its buffer is full) while it waited at a bad
    batch: the wait's end must not resume it, or it is read on past the memory budget.
    The pipeline's own resume reads it again (the wait cut short), and an unassigned
    partition is forgotten (the next owner's partition of it starts unpaused)."""
    clock = Clock()
    bb, consumer = BadBatches(clock), Consumer()
    bb.hold(consumer, [bad(1, 3)])
    bb.pause(consumer, ("t", 1))
    consumer.calls.clear()
    clock.now += librdkafka_corrupt.RETRY_S
    bb.hold(consumer, [])
    assert consumer.calls == []  # still the pipeline's pause
    bb.resume(consumer, ("t", 1))
    assert consumer.calls == [("resume", [("t", 1)])]
    bb.hold(consumer, [bad(1, 3)])  # bad again: held, and once due resumed by the retry
    bb.pause(consumer, ("t", 1))
    bb.forget([("t", 1)])
    consumer.calls.clear()
    clock.now += librdkafka_corrupt.RETRY_S
    bb.hold(consumer, [])
    assert consumer.calls == [("resume", [("t", 1)])]
