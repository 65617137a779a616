"""What a handler receives: a `Batch` of records from one partition or shard.

Records are the source's own objects (aiokafka's `ConsumerRecord` for Kafka;
on librdkafka a `LibrdkafkaRecord` over the client's message, with the same
fields), given the few extra attributes of our API at class level, so that
handing a batch to a handler costs nothing per record. `Record` states that API; every
source's record type meets it, and the core is typed against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from worker.outputs.outbox import Outbox


class Record(Protocol):
    """The record API every source provides (the README's handler section)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    headers: Sequence[tuple[str, bytes]]

    @property
    def timestamp_ms(self) -> int: ...

    @property
    def position(self) -> int:
        """Order of the record within its partition (offset, or sequence number)."""
        ...

    def json(self) -> Any:
        """The value decoded as JSON with orjson."""
        ...


@dataclass(slots=True, frozen=True)
class Batch:
    """Records of one partition in position order, handed to the handler in one call."""

    records: Sequence[Record]
    source: str
    partition: str
    #: Tumbling-window fields of the Lambda event (window, state, ...), when windows are on.
    window: dict[str, Any] | None = None
    #: Where this call's `send`s go (the invoker's, one per call); None: outputs are off.
    outbox: Outbox | None = None

    def send(
        self,
        topic: str,
        value: bytes | str | None,
        key: bytes | str | None = None,
        headers: Any = None,
        *,
        record: Record | None = None,
    ) -> None:
        """Queue an output record to `topic` (one of `outputs.topics`). It is produced only
        if this invoke succeeds, and only with the checkpoint covering this batch; with
        `record=` it belongs to that input record, and is discarded if the handler reports
        that record failed. `headers`: a dict or (name, bytes) pairs."""
        if self.outbox is None:
            raise RuntimeError("batch.send needs outputs.topics in the [outputs] section")
        self.outbox.add(topic, value, key, headers, record)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def first_position(self) -> int:
        return self.records[0].position

    @property
    def last_position(self) -> int:
        return self.records[-1].position
