"""The filter step: records that match no pattern are counted and committed, never invoked.

Lambda's event filtering, applied to each batch before the handler (so
`batch_size` counts records before filtering). Each record is matched as the
document its source's Lambda shape gives; the value is decoded only when a
pattern looks at it, with orjson, falling back to the standard library for
the JSON orjson refuses (so `1e400`, an escaped lone surrogate or a UTF-8 BOM
can still match), and with the standard library alone when a pattern names an
integer past 64 bits (orjson would read the value's as a float). A value that
is not JSON for either never matches a pattern on the body.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from worker.lambda_compat.patterns import compile_pattern, mentions
from worker.lambda_compat.shapes import Shape
from worker.partition.steps import PartitionContext, Step
from worker.records import Batch, Record

_NOT_JSON = object()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_exactly(value: bytes | None) -> Any:
    """The standard library's reading of the value (exact integers, a BOM, lone surrogates),
    or _NOT_JSON. NaN and Infinity, which the library would accept, are not JSON."""
    if value is None:
        return _NOT_JSON
    try:
        return json.loads(value, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _NOT_JSON


def decode(value: bytes | None) -> Any:
    """orjson's reading of the value; where orjson refuses what JSON allows (a number past
    a double's range, an escaped lone surrogate, a UTF-8 BOM), the standard library's."""
    try:
        return orjson.loads(value)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return decode_exactly(value)
    except TypeError:  # no value at all
        return _NOT_JSON


class RecordFilter:
    """Keeps the records that match any pattern."""

    def __init__(self, patterns: Sequence[str], shape: Shape) -> None:
        self._patterns = [compile_pattern(p) for p in patterns]
        self._document = shape.document
        self._body = shape.body
        body = self._body
        self._needs_body = [body is not None and mentions(p, body) for p in self._patterns]
        # orjson reads integers past 64 bits as floats: a pattern naming one decodes exactly.
        exact = any(p.exact_integers for p in self._patterns)
        self._decode = decode_exactly if exact else decode

    def keep(self, records: Sequence[Record]) -> list[Record]:
        return [r for r in records if self.matches(r)]

    def matches(self, record: Record) -> bool:
        doc: dict[str, Any] = self._document(record)
        decoded = False
        for pattern, needs_body in zip(self._patterns, self._needs_body, strict=True):
            if needs_body and not decoded:
                decoded = True
                body = self._decode(record.value)
                if body is not _NOT_JSON:  # else patterns on the body cannot match
                    doc[self._body] = body  # type: ignore[index]
            if needs_body and self._body not in doc:
                continue
            if pattern.match(doc):
                return True
        return False


class FilterStep:
    """Passes on what matches; a batch filtered to nothing is resolved at once."""

    def __init__(self, record_filter: RecordFilter, then: Step, ctx: PartitionContext) -> None:
        self._filter = record_filter
        self._then = then
        self._filtered = ctx.metrics.filtered

    async def submit(self, batch: Batch, end: int) -> Sequence[int]:
        kept = self._filter.keep(batch.records)
        if len(kept) < len(batch):
            self._filtered.inc(len(batch) - len(kept))
            batch = Batch(kept, batch.source, batch.partition, batch.window)
        return await self._then.submit(batch, end)

    async def poll(self) -> Sequence[int]:
        return await self._then.poll()

    def deadline(self) -> float | None:
        return self._then.deadline()
