"""Record sources behind one contract (`base`): Kafka, Kinesis, DynamoDB Streams, and the
in-memory log.

`make_source` builds the source a config names, importing only that source's
package, so a Kafka worker never imports aiobotocore and the reverse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.config_base import SourceSettings
    from worker.sources.base import Source

#: The daemon's sources by `source.kind`. The memory source has no entry: a test builds it.
_SOURCES = {
    "kafka": ("worker.sources.kafka.clients", "kafka_source"),  # source.client picks one
    "kinesis": ("worker.sources.kinesis.source", "KinesisSource"),
    "dynamodb": ("worker.sources.dynamodb.source", "DynamoDBSource"),
}


def make_source(config: SourceSettings) -> Source:
    kind = getattr(config, "kind", None)
    if kind not in _SOURCES:
        raise ValueError(f"source.kind {kind!r}: pass the source object in (worker.testing)")
    module, name = _SOURCES[kind]
    return getattr(importlib.import_module(module), name)(config)  # type: ignore[no-any-return]
