"""Reading a handler's partial batch response: which records of the batch failed.

Native handlers return the failed records themselves, their offsets or
positions (ints), or, for records that have one, their sequence numbers as
the strings Kinesis gives; `None` or an empty collection means all succeeded.
Lambda-style responses are turned into positions by the Lambda adapter and
read here too. As in Lambda, an identifier that is null, empty,
of the wrong kind or not in the batch makes the whole invocation a failure,
and so does a response that cannot even be read (an iterable that raises, an
unhashable item): the parsers raise only `InvalidResponse`, so odd output goes
the failure path and never ends a lane.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Parser = Callable[[Any, Sequence[Any]], "list[int] | None"]


class InvalidResponse(Exception):
    """The handler's partial response names something that is not a record of the batch."""


def total(parse: Parser) -> Parser:
    """`parse`, raising nothing but InvalidResponse: whatever the handler returned, reading
    it cannot raise past the failure policy (a TypeError there used to end the lane)."""

    @functools.wraps(parse)
    def parse_totally(result: Any, records: Sequence[Any]) -> list[int] | None:
        try:
            return parse(result, records)
        except InvalidResponse:
            raise
        except Exception as exc:
            raise InvalidResponse(
                f"the response cannot be read: {type(exc).__name__}: {exc}"
            ) from exc

    return parse_totally


def _sequence_index(records: Sequence[Any]) -> dict[str, int]:
    """Indexes by sequence number, of the records that have one (Kinesis's); built only when
    a response names records by string, so other responses pay nothing for it."""
    out = {}
    for i, r in enumerate(records):
        sequence = getattr(r, "sequence_number", None)
        if sequence is not None:
            out[sequence] = i
    return out


@total
def failed_indexes(result: Any, records: Sequence[Any]) -> list[int] | None:
    """Sorted indexes of the failed records, or None when every record succeeded."""
    if result is None:
        return None
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise InvalidResponse(f"expected a collection of failed records or offsets, got {result!r}")
    items = list(result)
    if not items:
        return None
    index = {r.position: i for i, r in enumerate(records)}
    by_sequence: dict[str, int] | None = None
    failed = set()
    for item in items:
        if isinstance(item, str):  # a sequence number, as Kinesis names records
            if by_sequence is None:
                by_sequence = _sequence_index(records)
            i = by_sequence.get(item)
        else:
            position = item if isinstance(item, int) and not isinstance(item, bool) else None
            if position is None:
                position = getattr(item, "position", None)
            i = index.get(position)  # type: ignore[arg-type]
        if i is None:
            raise InvalidResponse(f"failed item {item!r} is not a record of this batch")
        failed.add(i)
    return sorted(failed)
