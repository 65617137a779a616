"""Reading a handler's partial batch response: which records of the batch failed.

Native handlers return the failed records themselves or their offsets
(sequence numbers on Kinesis); `None` or an empty collection means all
succeeded. Lambda-style responses are turned into positions by the Lambda
adapter and read here too. As in Lambda, an identifier that is null, empty,
of the wrong kind or not in the batch makes the whole invocation a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class InvalidResponse(Exception):
    """The handler's partial response names something that is not a record of the batch."""


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
