"""The filter step: records that match no pattern are counted and committed, never invoked.

Lambda's event filtering, applied to each batch before the handler (so
`batch_size` counts records before filtering). Each record is matched as the
document its source's Lambda shape gives; the value is decoded only when a
pattern looks at it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import orjson

from worker.lambda_compat.patterns import compile_pattern, mentions
from worker.lambda_compat.shapes import Shape
from worker.partition.steps import PartitionContext, Step
from worker.records import Batch, Record


class RecordFilter:
    """Keeps the records that match any pattern."""

    def __init__(self, patterns: Sequence[str], shape: Shape) -> None:
        self._patterns = [compile_pattern(p) for p in patterns]
        self._document = shape.document
        self._body = shape.body
        self._needs_body = [mentions(p, self._body) for p in self._patterns]

    def keep(self, records: Sequence[Record]) -> list[Record]:
        return [r for r in records if self.matches(r)]

    def matches(self, record: Record) -> bool:
        doc: dict[str, Any] = self._document(record)
        decoded = False
        for pattern, needs_body in zip(self._patterns, self._needs_body, strict=True):
            if needs_body and not decoded:
                decoded = True
                # Not JSON: the body stays missing and patterns on it cannot match.
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    doc[self._body] = orjson.loads(record.value)  # type: ignore[arg-type]
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
