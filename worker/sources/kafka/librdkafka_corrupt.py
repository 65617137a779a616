"""librdkafka: a batch that fails its CRC is never skipped; its partition waits at it.

librdkafka reports the batch as an error message (`_BAD_MSG`, "MessageSet at offset N
... failed CRC32C check") and means to go on with the next batch; but it skips by the
batch's length taken as a position (a FIXME in its msgset reader since 2.x), so what
follows depends on where the batch lies in the fetch response: it stays at N (fetched
again), or it reads the batch's tail as a batch header, takes a garbage offset from it
("Unsupported Message(Set) MagicByte"), fetches there, and resets the partition by
`auto.offset.reset`. Measured on the real broker (tests/integration/
test_kafka_corrupt_batch, a byte flipped in a segment file), 5 runs of 6: reset to the
end with `starting_position = "latest"` (the batch and every record after it skipped:
a record produced next was handled and committed past them) or to the beginning
(every record of the partition read again).

So on the poller thread, right after each `consume()` that carried such an error, the
partition's messages after the error are dropped (records past the bad batch: the next
batch, or ones read after a reset), it is sought back to N (a seek drops what was
fetched, and a reset of an older fetch) and paused for `RETRY_S` (librdkafka would
fetch it again at once). Its error is not passed on: a warning naming the partition
and offset says it, once, then once every `WARN_S` with the failures since; the
partition's position is not trusted meanwhile (`held`: the source's marks).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from operator import methodcaller
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as RdTopicPartition

log = logging.getLogger("worker.source.kafka")

#: How long a partition stuck at a batch that fails is paused before it is read again.
RETRY_S = 1.0
#: How often the warning of a stuck partition is repeated (with the failures since).
WARN_S = 30.0


class BadBatches:
    """The partitions held at a batch librdkafka cannot read. Only the poller thread
    touches it (inside `_poll`); the loop reads `held` after the poll is done."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: (topic, partition) -> [offset, resume at, warned at, failures since].
        self._stuck: dict[tuple[str, int], list[Any]] = {}
        #: Partitions whose last `consume()` hit their bad batch: positions not trusted.
        self.held: set[tuple[str, int]] = set()
        #: Paused by the pipeline (its buffer is full): a retry's wait ending must not
        #: resume them, or they are read on past the memory budget (the pipeline's
        #: resume reads them again).
        self._pipeline_paused: set[tuple[str, int]] = set()
        #: Each read that hit a bad batch (`worker_poll_errors_total`, as aiokafka's
        #: retries are): an alert on it sees a stuck partition on either client.
        self._count: Callable[[], None] = lambda: None

    def count_with(self, count: Callable[[], None]) -> None:
        self._count = count

    def pause(self, consumer: Any, key: tuple[str, int]) -> None:
        """The pipeline pauses `key` (poller thread, queued in order with the reads)."""
        self._pipeline_paused.add(key)
        consumer.pause([RdTopicPartition(*key)])

    def resume(self, consumer: Any, key: tuple[str, int]) -> None:
        """The pipeline resumes `key`: a stuck one is read again now, its wait cut short."""
        self._pipeline_paused.discard(key)
        consumer.resume([RdTopicPartition(*key)])

    def forget(self, keys: Iterable[tuple[str, int]]) -> None:
        """Unassigned: librdkafka's pause was lifted with them (`librdkafka_rebalance`)."""
        self._pipeline_paused.difference_update(keys)

    def hold(self, consumer: Any, messages: Sequence[Message]) -> Sequence[Message]:
        """`messages` without what comes after a bad batch in its partition; that
        partition sought back to the batch and paused. Resumes the ones whose wait ended.
        Called for every `consume()`: with `()` for one whose messages carry no error."""
        now = self._clock()
        self._resume_due(consumer, now)
        self.held = set()
        if not any(map(_ERROR, messages)) or not any(map(_is_bad, messages)):
            return messages  # no bad batch: one C-level pass, no Python call per message
        kept: list[Message] = []
        for m in messages:
            key = (m.topic(), m.partition())
            if key in self.held:
                continue  # past the bad batch (or read after a reset): not ours to give
            if _is_bad(m):
                self.held.add(key)
                self._stuck_at(consumer, key, m.offset(), m.error(), now)
                continue
            kept.append(m)
        return kept

    def _stuck_at(self, consumer: Any, key: tuple[str, int], offset: int, error: Any,
                  now: float) -> None:  # fmt: skip
        tp = RdTopicPartition(key[0], key[1], offset)
        try:
            consumer.seek(tp)
            consumer.pause([RdTopicPartition(*key)])
        except KafkaException as exc:  # revoked meanwhile: the next owner reads it
            log.info("event=fetch_stuck_not_held partition=%s-%d error=%r", *key, str(exc))
            return
        state = self._stuck.get(key)
        if state is None or state[0] != offset:
            state = self._stuck[key] = [offset, 0.0, None, 0]
        state[1], state[3] = now + RETRY_S, state[3] + 1
        self._count()
        if state[2] is None or now - state[2] >= WARN_S:
            log.warning("event=fetch_stuck partition=%s-%d offset=%d failures=%d error=%r "
                        "note='the next record to read is in a batch that fails to read (a "
                        "CRC error: corrupt on the broker or on the way); not skipped: the "
                        "partition waits here, retried every %.0fs, the others go on'",
                        key[0], key[1], offset, state[3], str(error), RETRY_S)  # fmt: skip
            state[2], state[3] = now, 0

    def _resume_due(self, consumer: Any, now: float) -> None:
        for key, state in self._stuck.items():
            if state[1] and now >= state[1]:
                state[1] = 0.0
                if key in self._pipeline_paused:
                    continue  # read again when the pipeline resumes it
                with contextlib.suppress(KafkaException):  # not assigned any more
                    consumer.resume([RdTopicPartition(*key)])


#: Each message's own `error()`, as `librdkafka_records` reads it (`map` calls it in C).
_ERROR = methodcaller("error")


def _is_bad(message: Message) -> bool:
    error = message.error()
    return bool(error) and error.code() == KafkaError._BAD_MSG
