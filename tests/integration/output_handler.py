"""The recording handler (holds, poison, the record file), plus one output per record.

Each record is sent to `$OUTPUT_TOPIC` as "partition:offset" with its key, belonging to
the record (`record=`), after the recording handler has handled the batch (so a held or
poisoned batch queues nothing it could lose or leak). Barrier records send nothing.
"""

from __future__ import annotations

import os

import recording_handler

_TOPIC = os.environ.get("OUTPUT_TOPIC", "outputs")
_BARRIER_TOPIC = os.environ.get("RECORD_BARRIER_TOPIC")
#: "PARTITION:OFFSET": that record's output carries 700 KB of padding (a topic whose
#: max.message.bytes is smaller refuses it, so its transaction fails).
_HUGE = (
    tuple(map(int, os.environ["OUTPUT_HUGE"].split(":"))) if "OUTPUT_HUGE" in os.environ else None
)


def handle(batch) -> None:
    recording_handler.handle(batch)
    records = batch.records
    if _BARRIER_TOPIC is not None and records and records[0].topic == _BARRIER_TOPIC:
        return
    for r in records:
        value = f"{r.partition}:{r.offset}"
        if (r.partition, r.offset) == _HUGE:
            value += " " * 700_000
        batch.send(_TOPIC, value, key=r.key, record=r)
