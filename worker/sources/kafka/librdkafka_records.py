"""librdkafka's messages as the records the rest of the worker knows (aiokafka's type).

confluent-kafka's `Message` is a C type whose fields are methods (`value()`), so it
cannot take our record API's attributes. Each message becomes an aiokafka
`ConsumerRecord`, which already carries them (`record.py`), in one pass over what
`consume()` returned, on the poller thread: so the pipeline, the Lambda event builder,
the dead-letter destinations and the handler-process packing are the same for both
clients, and a handler cannot tell which one read its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

import worker.sources.kafka.record  # noqa: F401  (installs the record API on ConsumerRecord)

#: librdkafka's timestamp types (0 not available, 1 create, 2 log append) by aiokafka's
#: numbering (0 create, 1 log append).
_TIMESTAMP_TYPES = (0, 0, 1)


def by_partition(
    messages: Sequence[Any],
) -> tuple[dict[TopicPartition, list[ConsumerRecord]], list[Any]]:
    """The records of `messages` grouped by partition in their order, and the errors
    (the messages that carry one, as librdkafka's `KafkaError`s)."""
    chunks: dict[TopicPartition, list[ConsumerRecord]] = {}
    errors = []
    current_key: tuple[str, int] | None = None
    append = [].append
    types = _TIMESTAMP_TYPES
    record = ConsumerRecord
    for m in messages:
        error = m.error()
        if error is not None:
            errors.append(error)
            continue
        topic, partition = m.topic(), m.partition()
        if (topic, partition) != current_key:
            current_key = (topic, partition)
            current = chunks.setdefault(TopicPartition(topic, partition), [])
            append = current.append
        kind, ts = m.timestamp()
        key, value = m.key(), m.value()
        append(
            record(
                topic, partition, m.offset(), ts, types[kind], key, value, None,
                -1 if key is None else len(key), -1 if value is None else len(value),
                m.headers() or (),
            )
        )  # fmt: skip
    return chunks, errors
