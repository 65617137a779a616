"""What a dead-lettered batch carries, and the contract every destination meets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Lambda's condition names (RecordAgeExceeded is ours: AWS documents none for age).
RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"


def utf8_safe(text: str) -> str:
    """`text`, with what UTF-8 cannot encode (lone surrogates) written as `\\udcff` escapes.

    Error messages come from handler code and may hold lone surrogates (from a
    `surrogateescape` decode, say); every destination must still be able to write them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class DestinationError(Exception):
    """The destination did not acknowledge the write; nothing may be committed past it."""


@dataclass(slots=True)
class FailureEvent:
    """Records of one partition that are given up on, with why."""

    condition: str
    source: str
    partition: str
    records: Sequence[Any]
    attempts: int
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    #: `file:line` that raised, in the handler's code where it can be told.
    where: str = ""
    failed_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        # Once per failure event, so no destination meets text it cannot encode.
        self.error_type = utf8_safe(self.error_type)
        self.error_message = utf8_safe(self.error_message)
        self.traceback = utf8_safe(self.traceback)
        self.where = utf8_safe(self.where)  # a path: undecodable bytes in it are surrogates


class Destination(Protocol):
    name: str

    async def start(self) -> None: ...

    async def send(self, event: FailureEvent) -> None:
        """Return only once the destination durably holds the event; else raise DestinationError."""

    async def stop(self) -> None: ...
