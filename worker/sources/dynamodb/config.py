"""`[source]` with `kind = "dynamodb"`: the table or its stream, and the lease settings.

The lease table is a DynamoDB table too, so `lease_endpoint_url` defaults to
`endpoint_url` here. Lambda reads a DynamoDB stream from its trim horizon or its
latest record only: `at_timestamp` is refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from worker.sources.kinesis.config import LeasedStreamSettings


class DynamoDBSourceConfig(LeasedStreamSettings):
    kind: Literal["dynamodb"] = "dynamodb"
    #: DynamoDB's rule for table names.
    table_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")] | None = None
    #: The stream to read; unset, the table's latest stream.
    stream_arn: str | None = None

    @property
    def lease_endpoint(self) -> str | None:
        return self.lease_endpoint_url or self.endpoint_url

    @property
    def table(self) -> str:
        """The table's name, from `table_name` or the stream's ARN (`...:table/NAME/stream/...`)."""
        if self.table_name:
            return self.table_name
        return (self.stream_arn or "").partition(":table/")[2].partition("/")[0]

    @model_validator(mode="after")
    def _check(self) -> DynamoDBSourceConfig:
        if not (self.table_name or self.stream_arn):
            raise ValueError("source.table_name: a dynamodb source needs table_name or stream_arn")
        if self.stream_arn and ":table/" not in self.stream_arn:
            raise ValueError(
                f"source.stream_arn: {self.stream_arn!r} is not a DynamoDB stream ARN "
                "(arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL)"
            )
        leases = self.lease_table or f"{self.group_id}-leases"
        if leases == self.table and self.lease_endpoint == self.endpoint_url:
            raise ValueError(
                f"source.lease_table: {leases!r} is the table whose stream is read: every "
                "checkpoint would be a change read again (name another lease_table)"
            )
        if self.starting_position == "at_timestamp":
            raise ValueError(
                "source.starting_position: a DynamoDB stream starts at 'trim_horizon' or "
                "'latest' (Lambda allows no 'at_timestamp' for DynamoDB)"
            )
        return self
