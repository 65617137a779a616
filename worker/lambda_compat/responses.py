"""Lambda's partial batch response, `{"batchItemFailures": [{"itemIdentifier": ...}]}`, as indexes.

Rules as Lambda applies them: a null or empty response,
a response without `batchItemFailures`, or an empty or null list means every
record succeeded. An identifier that is null, empty, under a wrongly named
key, of the wrong shape (an unhashable value too) or not in the batch fails the
whole invocation.
Kafka identifiers are `{"partition": "topic-N", "offset": N}`; Kinesis
identifiers are sequence numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.handling.partial import InvalidResponse, total


def _identifiers(result: Any) -> list[Any] | None:
    if not isinstance(result, dict):
        return None
    items = result.get("batchItemFailures")
    if items is None:
        return None
    if not isinstance(items, list):
        raise InvalidResponse(f"batchItemFailures must be a list, got {items!r}")
    out = []
    for item in items:
        if not isinstance(item, dict) or "itemIdentifier" not in item:
            raise InvalidResponse(f"batch item failure without itemIdentifier: {item!r}")
        ident = item["itemIdentifier"]
        if ident is None or ident == "" or ident == {}:
            raise InvalidResponse(f"empty itemIdentifier: {item!r}")
        out.append(ident)
    return out or None


@total
def kafka_failed_indexes(result: Any, records: Sequence[Any]) -> list[int] | None:
    idents = _identifiers(result)
    if idents is None:
        return None
    index = {(f"{r.topic}-{r.partition}", r.offset): i for i, r in enumerate(records)}
    failed = set()
    for ident in idents:
        if not isinstance(ident, dict) or set(ident) != {"partition", "offset"}:
            raise InvalidResponse(f"kafka itemIdentifier must be {{partition, offset}}: {ident!r}")
        partition, offset = ident["partition"], ident["offset"]
        if isinstance(offset, str) and offset.isdigit():
            offset = int(offset)
        named = isinstance(partition, str) and isinstance(offset, int | float)
        i = index.get((partition, offset)) if named else None
        if i is None or isinstance(offset, bool):
            raise InvalidResponse(f"itemIdentifier {ident!r} is not a record of this batch")
        failed.add(i)
    return sorted(failed)


@total
def kinesis_failed_indexes(result: Any, records: Sequence[Any]) -> list[int] | None:
    idents = _identifiers(result)
    if idents is None:
        return None
    index = {r.sequence_number: i for i, r in enumerate(records)}
    failed = set()
    for ident in idents:
        i = index.get(ident) if isinstance(ident, str) else None
        if i is None:
            raise InvalidResponse(
                f"itemIdentifier {ident!r} is not a sequence number of this batch"
            )
        failed.add(i)
    return sorted(failed)
