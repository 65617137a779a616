"""Notes kept with Kafka commits (the commit's metadata string), read back on assignment.

The dead-letter guard's counts travel this way, so its halt outlives the
process: before, each restart of a halted worker dead-lettered another
`max_consecutive_dead_letters` records. Kafka stores a short string with each
committed offset (`offset.metadata.max.bytes`, 4096 by default); the consumer's
`committed()` returns only the offset, so the notes are read with the admin
client's OffsetFetch, once per assignment and only when a note is wanted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

log = logging.getLogger("worker.source.kafka")

#: An assignment waits at most this long for the notes; then the guard starts afresh.
READ_TIMEOUT_S = 5.0


class CommitNotes:
    def __init__(self, connection: Mapping[str, Any], group: str) -> None:
        self._connection = connection
        self._group = group
        self._wanted = False
        self._admin: AIOKafkaAdminClient | None = None
        self._notes: dict[TopicPartition, str] = {}  # to write with the next commits
        self._unwritten: set[TopicPartition] = set()  # changed since the last commit
        self._recalled: dict[TopicPartition, str] = {}  # read when assigned

    def keep(self) -> None:
        self._wanted = True

    def remember(self, tp: TopicPartition, note: str) -> None:
        if self._notes.get(tp) != note:
            self._notes[tp] = note
            self._unwritten.add(tp)

    def unwritten(self) -> set[TopicPartition]:
        """Partitions whose note changed while their position did not move (a halt)."""
        return set(self._unwritten)

    def written(self, partitions: Iterable[TopicPartition]) -> None:
        self._unwritten.difference_update(partitions)

    def recall(self, tp: TopicPartition) -> str:
        return self._recalled.get(tp, "")

    def with_notes(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, Any]:
        """The commit's argument: plain offsets, or offsets with their notes."""
        if not self._wanted:
            return dict(offsets)
        return {tp: OffsetAndMetadata(o, self._notes.get(tp, "")) for tp, o in offsets.items()}

    async def load(self, partitions: Sequence[TopicPartition]) -> None:
        """Read the notes of newly assigned partitions (bounded; a failure is logged)."""
        if not self._wanted or not partitions:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**self._connection)
                    await admin.start()
                    self._admin = admin
                found = await self._admin.list_consumer_group_offsets(
                    self._group, partitions=list(partitions)
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("event=commit_notes_unread partitions=%s error=%r note='the "
                        "dead-letter guard counts these partitions afresh'",
                        ",".join(f"{tp.topic}-{tp.partition}" for tp in partitions),
                        str(exc) or type(exc).__name__)  # fmt: skip
            return
        for tp in partitions:
            meta = found.get(tp)
            # confluent-kafka commits the metadata with its C string's closing NUL.
            text = meta.metadata.rstrip("\x00") if meta is not None and meta.metadata else ""
            self._recalled[tp] = text
            self._notes[tp] = self._recalled[tp]  # kept until the guard says otherwise

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._notes.pop(tp, None)
            self._recalled.pop(tp, None)
        self._unwritten.difference_update(partitions)

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
