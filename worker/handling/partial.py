"""Reading a handler's partial batch response: which records of the batch failed.

Native handlers return the failed records themselves or their offsets
(sequence numbers on Kinesis); `None` or an empty collection means all
succeeded. Lambda-style responses are turned into positions by the Lambda
adapter and read here too. As in Lambda, an identifier that is null, empty,
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
    failed = set()
    for item in items:
        position = item if isinstance(item, int) and not isinstance(item, bool) else None
        if position is None:
            position = getattr(item, "position", None)
        i = index.get(position)  # type: ignore[arg-type]
        if i is None:
            raise InvalidResponse(f"failed item {item!r} is not a record of this batch")
        failed.add(i)
    return sorted(failed)
