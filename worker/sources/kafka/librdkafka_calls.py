"""The consumer calls (`consume_queued`; commits, pause, resume), run on the poller
thread: the one thread that ever touches librdkafka's consumer.

Why one thread: a synchronous commit made from another thread while the poller thread
is inside `consume()` during a rebalance does not return until that thread stops
consuming (measured on the real broker: a commit started 20 ms before a revoke callback
returned 24 s later, when the poller stopped; every commit made from another thread
during the callback timed out). The worker's revoke commits its drained positions
while the poller thread blocks in the revoke callback, so those commits must run on
that very thread, as librdkafka's own examples commit inside the callback.

So every such call is queued here and served on the poller thread: between two
`consume()`s (each call also queues a `serve` on the poller's executor, so it runs even
when nothing fetches, as at shutdown), and while a rebalance callback waits for the
event loop (`serve_until`). A commit waits at most one `consume()` timeout (the
worker's fetch timeout, 0.2 s) for its turn.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any

from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.sources.base import OwnershipLost
from worker.sources.kafka.config import KafkaSourceConfig

log = logging.getLogger("worker.source.kafka")

_Call = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


def consume_queued(consumer: Any, count: int, timeout_s: float) -> list[Any]:
    """Up to `count` messages of what librdkafka has queued now, waiting up to `timeout_s`
    only while nothing is: as aiokafka's `getmany`.

    `consume(count, timeout)` itself waits until `count` messages are queued (or the
    timeout passes): with the worker's 10,000, each fetch waited for the pre-fetch queue
    to fill while the pipeline sat idle (the worker read at 0.41 of the raw
    `consume(1000)` loop with a third of a core idle, load/results/librdkafka.md), and a
    trickle of records waited the whole fetch timeout (0.2 s) in the queue every time."""
    messages = consumer.consume(count, 0)
    if messages or timeout_s <= 0:
        return messages
    messages = consumer.consume(1, timeout_s)
    if messages and count > 1:
        messages += consumer.consume(count - 1, 0)
    return messages


class ConsumerClosed(RuntimeError):
    """A call queued after the consumer closed: nothing was sent."""


class PollerCalls:
    def __init__(self, poller: Executor) -> None:
        self._poller = poller
        #: The calls not yet run, in the order they were asked for; `None` only wakes a
        #: callback's `serve_until`.
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """From any thread: `fn(*args)` on the poller thread, at its next turn."""
        future: Future[Any] = Future()
        if self._closed:
            future.set_exception(ConsumerClosed("the librdkafka consumer is closed"))
            return future
        self._queue.put((future, fn, args))
        try:
            self._poller.submit(self.serve)
        except RuntimeError:  # the executor is shut down: `close` fails what is left
            self.close()
        return future

    def serve(self) -> None:
        """On the poller thread: run every call queued now, in order."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _run(item)

    def serve_until(self, done: Future[Any], timeout_s: float) -> bool:
        """On the poller thread, inside a rebalance callback: run calls as they come
        until `done` is (True), or for `timeout_s` (False)."""
        done.add_done_callback(lambda _: self._queue.put(None))
        deadline = time.monotonic() + timeout_s
        while not done.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if item is not None:
                _run(item)
        self.serve()  # what the finished step queued last (a commit it did not await)
        return True

    def close(self) -> None:
        """After the consumer closed: fail what is still queued (and all later calls)."""
        self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[0].set_running_or_notify_cancel():
                item[0].set_exception(ConsumerClosed("the librdkafka consumer closed first"))


def _run(item: _Call) -> None:
    future, fn, args = item
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # handed to whoever waits for the call
        future.set_exception(exc)


def said(done: Future[Any]) -> None:
    """A pause or resume the client refused (a partition revoked meanwhile): logged."""
    if not done.cancelled() and done.exception() is not None:
        log.debug("event=pause_resume_failed error=%r", str(done.exception()))


def left_at_stop(done: Any) -> None:
    """A poll pending at `stop` (a bounded fetch gave up on it): its records, never handed
    over, go with the consumer; an error it raised is logged, not left unretrieved."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("event=poll_failed_at_stop error=%r", str(done.exception()))


def read_marks(
    consumer: Any, tps: list[Any], reached: Callable[[Any], int] = lambda tp: -1
) -> dict[Any, tuple[int, int]]:
    """On the poller thread: the cached high watermark and the fetch position of `tps`
    (aiokafka `TopicPartition`s); the partitions the client no longer has are left out
    (the next read has them). The position is at least `reached(tp)`: a reset to a log
    with no record left serves none, and librdkafka's position stays unset (-1001)."""
    marks: dict[Any, tuple[int, int]] = {}
    try:
        asked = [RdTopicPartition(tp.topic, tp.partition) for tp in tps]
        positions = consumer.position(asked) if tps else []
        for tp, rd, at in zip(tps, asked, positions, strict=True):
            high = consumer.get_watermark_offsets(rd, cached=True)
            if high is not None and high[1] >= 0:
                marks[tp] = (high[1], max(at.offset, reached(tp)))
    except (KafkaException, RuntimeError):
        pass
    return marks


class CheckpointUnread(RuntimeError):
    """The group's checkpoint of a partition being taken could not be read."""

    def __init__(self, which: str) -> None:
        super().__init__(f"the group's checkpoint could not be read ({which}); not started "
                         "where starting_position says, which could skip records")  # fmt: skip


def start_offsets(
    consumer: Any, partitions: list[RdTopicPartition], config: KafkaSourceConfig, timeout_s: float
) -> tuple[list[RdTopicPartition], list[RdTopicPartition]]:
    """On the poller thread, in an assign callback: where each new partition starts, its
    committed offset, else where `starting_position` says; and those of the second kind
    (the group had no checkpoint of them).

    A partition `committed()` answers with an error (its offset then reads -1001, as for
    no checkpoint: a pending transaction's offsets, `UNSTABLE_OFFSET_COMMIT`, past the
    timeout; a coordinator error) is not one without a checkpoint: taken so, `latest`
    would start it at the end, commit that start over the checkpoint it could not read,
    and skip every record between. It fails the assignment instead (`SourceFailed`, one
    line: the worker stops and its partitions go to a member that can read them)."""
    found = consumer.committed(partitions, timeout=timeout_s)
    unread = [tp for tp in found if tp.error is not None]
    if unread:
        raise CheckpointUnread(", ".join(f"{tp.topic}-{tp.partition}: {tp.error.str()}"
                                         for tp in unread))  # fmt: skip
    out, fresh, timestamp = [], [], config.starting_position == "at_timestamp"
    for tp in found:
        if tp.offset >= 0:
            out.append(RdTopicPartition(tp.topic, tp.partition, tp.offset))
            continue
        fresh.append(tp)
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        offset = low if config.starting_position == "trim_horizon" else high
        if timestamp:
            ts_ms = int(config.starting_position_timestamp * 1000)
            asked = [RdTopicPartition(tp.topic, tp.partition, ts_ms)]
            hit = consumer.offsets_for_times(asked, timeout=timeout_s)[0]
            offset = hit.offset if hit.offset >= 0 else high
        out.append(RdTopicPartition(tp.topic, tp.partition, offset))
    return out, fresh


def low_watermark(consumer: Any, tp: Any) -> int | None:
    """On the poller thread: the log start of `tp`'s last fetch response, if known."""
    try:
        asked = RdTopicPartition(tp.topic, tp.partition)
        marks = consumer.get_watermark_offsets(asked, cached=True)
    except (KafkaException, RuntimeError):
        return None
    return marks[0] if marks is not None and marks[0] >= 0 else None


#: A commit refused for one of these: the group moved on, this member owns nothing.
OWNERSHIP_ERRORS = frozenset({
    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError._ASSIGNMENT_LOST,
    KafkaError.FENCED_INSTANCE_ID, KafkaError.STALE_MEMBER_EPOCH,
    KafkaError.FENCED_MEMBER_EPOCH, KafkaError._STATE,
})  # fmt: skip


def rd_partition(tp: Any, offset: int = -1001, metadata: str | None = None) -> RdTopicPartition:
    """confluent-kafka's `TopicPartition` of our (aiokafka's) `tp`."""
    if metadata is None:
        return RdTopicPartition(tp.topic, tp.partition, offset)
    return RdTopicPartition(tp.topic, tp.partition, offset, metadata=metadata)


def commit_sync(consumer: Any, offsets: Mapping[Any, Any], asked: Mapping[Any, int]) -> None:
    """On the poller thread: commit `offsets` (ints, or `OffsetAndMetadata` with a note)
    synchronously; a refusal for ownership is `OwnershipLost` (of `asked`), as aiokafka's
    is, any other a `ConnectionError` (the committer retries it)."""
    batch = [
        rd_partition(tp, v.offset, v.metadata) if isinstance(v, OffsetAndMetadata)
        else rd_partition(tp, v)
        for tp, v in offsets.items()
    ]  # fmt: skip
    try:
        answered = consumer.commit(offsets=batch, asynchronous=False) or []
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        code = error.code() if isinstance(error, KafkaError) else None
        if code in OWNERSHIP_ERRORS:
            raise OwnershipLost(str(error), asked) from exc
        raise ConnectionError(f"kafka commit failed: {error}") from exc
    refused = [tp for tp in answered if tp.error is not None]
    if refused:
        first = refused[0].error
        if first.code() in OWNERSHIP_ERRORS:
            raise OwnershipLost(str(first), asked)
        raise ConnectionError(f"kafka commit failed: {first}")
