"""An in-process partitioned log with consumer-group offsets, behind the source contract.

It serves the pipeline's unit tests and users' handler tests (`worker.testing`):
records are produced into topics of N partitions, a `MemorySource` owns all
partitions of its topics, commits go to the broker's offset store, and
`revoke()` / `assign()` simulate a rebalance. It is never a stand-in for the
real broker in integration tests.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from worker.sources.base import AssignmentListener, OwnershipLost, RecordTraits, next_to_read

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Sequence[tuple[str, bytes]] = ()
    sequence_number: str | None = None  # set when it stands for a Kinesis record
    shard_id: str | None = None

    def json(self) -> Any:
        return orjson.loads(self.value)  # type: ignore[arg-type]

    @property
    def timestamp_ms(self) -> int:
        return self.timestamp

    @property
    def position(self) -> int:
        return self.offset


def _record_size(record: MemoryRecord) -> int:
    return len(record.value) if record.value is not None else 0


def pack(records: Sequence[MemoryRecord]) -> tuple[list[Any], ...]:
    """Every field, column by column."""
    return tuple(list(column) for column in zip(*(_fields(r) for r in records), strict=True))


def _fields(r: MemoryRecord) -> tuple[Any, ...]:
    return (r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, r.headers,
            r.sequence_number, r.shard_id)  # fmt: skip


def unpack(columns: tuple[list[Any], ...]) -> list[MemoryRecord]:
    return [MemoryRecord(*fields) for fields in zip(*columns, strict=True)]


TRAITS = RecordTraits(
    size=_record_size,
    timestamp_ms=attrgetter("timestamp"),
    overhead_bytes=320,
    pack=pack,
    unpack=unpack,
    shown_checkpoint=next_to_read,
    messaging_system="memory",
)


@dataclass
class MemoryBroker:
    """Topics of partitions of records, plus committed offsets per (group, topic, partition)."""

    topics: dict[str, list[list[MemoryRecord]]] = field(default_factory=dict)
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: The note committed with each offset (Kafka's commit metadata).
    notes: dict[tuple[str, str, int], str] = field(default_factory=dict)
    _arrived: asyncio.Event | None = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self.topics.setdefault(name, [[] for _ in range(partitions)])

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> MemoryRecord:
        parts = self.topics[topic]
        if partition is None:
            partition = zlib.crc32(key) % len(parts) if key is not None else 0
        log = parts[partition]
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        record = MemoryRecord(topic, partition, len(log), key, value, ts, tuple(headers))
        log.append(record)
        if self._arrived is not None:
            self._arrived.set()
        return record

    def commit(self, group: str, topic: str, partition: int, offset: int, note: str = "") -> None:
        self.offsets[(group, topic, partition)] = offset
        self.notes[(group, topic, partition)] = note

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        return self.offsets.get((group, topic, partition))

    def end_offset(self, topic: str, partition: int) -> int:
        return len(self.topics[topic][partition])

    def arrived(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived


class MemorySource:
    """The sole member of its group: owns every partition of its topics."""

    name = "memory"
    traits = TRAITS
    revoke_hold_s = None  # the sole member: nobody takes a partition from it

    def __init__(
        self,
        broker: MemoryBroker,
        topics: Iterable[str],
        group_id: str = "test",
        max_records: int = 10_000,
    ) -> None:
        self.broker = broker
        self.topics = list(topics)
        self.group_id = group_id
        self.max_records = max_records
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        #: (share_bytes, partitions) of every `fit_prefetch`, in order.
        self.prefetch_shares: list[tuple[int, int]] = []
        #: Tests set this to make commits fail as a broker outage would.
        self.commit_error: Exception | None = None
        self._listener: AssignmentListener | None = None
        self._notes: dict[TopicPartition, str] = {}

    def all_partitions(self) -> list[TopicPartition]:
        return [(t, p) for t in self.topics for p in range(len(self.broker.topics[t]))]

    def attach(self, metrics: Any) -> None:
        return None  # the pipeline's metrics say all there is

    async def start(self, listener: AssignmentListener) -> None:
        self._listener = listener
        await self.assign(self.all_partitions())

    async def assign(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self.positions[tp] = self.broker.committed(self.group_id, *tp) or 0
        assert self._listener is not None
        await self._listener.on_assigned(list(partitions))

    async def revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Simulate losing partitions in a rebalance: the listener drains and commits first."""
        assert self._listener is not None
        await self._listener.on_revoked(list(partitions))
        for tp in partitions:
            self.positions.pop(tp, None)
            self.paused.discard(tp)
            self._notes.pop(tp, None)

    async def fetch(self, timeout_s: float) -> Mapping[TopicPartition, Sequence[MemoryRecord]]:
        out = self._take()
        if out:
            return out
        arrived = self.broker.arrived()
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), timeout_s)
        except TimeoutError:
            return {}
        return self._take()

    def _take(self) -> dict[TopicPartition, list[MemoryRecord]]:
        out: dict[TopicPartition, list[MemoryRecord]] = {}
        budget = self.max_records
        for tp, pos in self.positions.items():
            if tp in self.paused or budget <= 0:
                continue
            log = self.broker.topics[tp[0]][tp[1]]
            chunk = log[pos : pos + budget]
            if chunk:
                out[tp] = chunk
                self.positions[tp] = pos + len(chunk)
                budget -= len(chunk)
        return out

    def fit_prefetch(self, share_bytes: int, partitions: int) -> int:
        """Reads straight from the broker's lists, so it holds nothing ahead; it keeps the
        shares it was offered, for tests of how the core splits its budget."""
        self.prefetch_shares.append((share_bytes, partitions))
        return 0

    def pause(self, partition: TopicPartition) -> None:
        self.paused.add(partition)

    def resume(self, partition: TopicPartition) -> None:
        self.paused.discard(partition)

    async def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        lost = {tp for tp in positions if tp not in self.positions}
        for (topic, part), pos in positions.items():
            if (topic, part) not in lost:
                note = self._notes.get((topic, part), "")
                self.broker.commit(self.group_id, topic, part, next_to_read(pos), note)
        self.commits.append({tp: p for tp, p in positions.items() if tp not in lost})
        if lost:
            raise OwnershipLost(f"not assigned: {sorted(lost)}", lost)

    def keep_notes(self) -> None:
        return None  # the broker keeps every commit's note

    def remember(self, partition: TopicPartition, note: str) -> None:
        self._notes[partition] = note

    def recall(self, partition: TopicPartition) -> str:
        return self.broker.notes.get((self.group_id, *partition), "")

    async def flush_notes(self) -> None:
        for (topic, part), note in self._notes.items():
            offset = self.broker.committed(self.group_id, topic, part)
            if (topic, part) in self.positions and note != self.recall((topic, part)):
                self.broker.commit(self.group_id, topic, part, offset or 0, note)

    def label(self, partition: TopicPartition) -> str:
        return f"{partition[0]}-{partition[1]}"

    def lag(self, partition: TopicPartition) -> int | None:
        committed = self.broker.committed(self.group_id, *partition) or 0
        return self.broker.end_offset(*partition) - committed

    def read_through(self, partition: TopicPartition) -> None:
        """Nothing to pass: its log holds only records."""

    def waiting(self, partition: TopicPartition) -> bool:
        return bool(self.lag(partition))

    async def stop_taking(self) -> None:
        """Assignments are the test's to make: nothing to stop."""

    async def stop(self) -> None:
        self._listener = None
