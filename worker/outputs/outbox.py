"""What one invoke sent: `batch.send` appends here, and nothing leaves before the invoke
has succeeded. A fresh outbox per call (the invoker's), so a retry or a bisected piece
never inherits what a failed call queued."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The largest output `send` takes (value, key and headers), `outputs.max_message_bytes`'s
#: default: within Kafka's default `max.message.bytes` (1048588) and the producer's
#: request limit. A larger one could never be produced, and would hold its partition's
#: checkpoint for ever; refused at `send`, it fails its invoke (retried, dead-lettered).
MAX_OUTPUT_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    #: The position of the input record it was sent for (`record=`), or None: the batch's.
    position: int | None


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"batch.send: {what} must be bytes, str or None, not {type(value).__name__}")


def _headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> list:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), _as_bytes(v, f"header {k!r}") or b"") for k, v in items]


class Outbox:
    __slots__ = ("_open", "items", "max_bytes", "topics")

    def __init__(self, topics: frozenset[str], max_bytes: int = MAX_OUTPUT_BYTES) -> None:
        self.topics = topics
        self.max_bytes = max_bytes
        self.items: list[Output] = []
        self._open = True

    def close(self) -> None:
        """The call ended: its outputs were taken. A send from something it left running
        (a task, a thread past its timeout) raises rather than vanish."""
        self._open = False

    def add(self, topic: str, value: Any, key: Any, headers: Any, record: Any) -> None:
        if not self._open:
            raise RuntimeError("batch.send after the invoke ended (its outputs were taken "
                               "when the handler returned): send before returning")  # fmt: skip
        if topic not in self.topics:
            allowed = ", ".join(sorted(self.topics))
            raise ValueError(f"batch.send: topic {topic!r} is not in outputs.topics ({allowed})")
        position = None if record is None else record.position
        output = Output(topic, _as_bytes(value, "value"), _as_bytes(key, "key"),
                        _headers(headers), position)  # fmt: skip
        size = (len(output.value or b"") + len(output.key or b"")
                + sum(len(k) + len(v) for k, v in output.headers))  # fmt: skip
        if size > self.max_bytes:
            raise ValueError(f"batch.send: an output of {size} bytes is over "
                             f"outputs.max_message_bytes ({self.max_bytes})")  # fmt: skip
        self.items.append(output)


def keep_outputs(
    outputs: list[Output],
    kept: list[Output] | None,
    records: Sequence[Any],
    ok: bool,
    failed: list[int] | None,
    failed_only: bool,
) -> int:
    """Keep a call's outputs in `kept` if it succeeded (`ok`); of a partial success
    (`failed` indexes reported), all but those sent for a record that is tried again
    (`record=`), since the retry sends them anew. Returns how many were discarded: all
    of a failed call's, and all when nothing keeps them (`kept` None)."""
    if kept is None or (not ok and failed is None):
        return len(outputs)
    if ok or not failed:
        kept.extend(outputs)
        return 0
    again = (
        {records[i].position for i in failed}
        if failed_only
        else {r.position for r in records[failed[0] :]}
    )
    keep = [o for o in outputs if o.position is None or o.position not in again]
    kept.extend(keep)
    return len(outputs) - len(keep)
