"""`source.kind = "dynamodb"`: the Kinesis source's leases, checkpoints and readers, on a
DynamoDB stream's calls and records."""

from __future__ import annotations

from typing import Any

from worker.sources.dynamodb.api import DynamoDBStreamsApi
from worker.sources.dynamodb.config import DynamoDBSourceConfig
from worker.sources.dynamodb.record import TRAITS
from worker.sources.kinesis.source import KinesisSource


def DynamoDBSource(config: DynamoDBSourceConfig, session: Any = None) -> KinesisSource:
    """`session`: an aiobotocore session (tests pass one with event hooks to inject faults)."""
    return KinesisSource(config, session, DynamoDBStreamsApi(config), TRAITS)
