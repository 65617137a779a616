"""`[source]` with `kind = "kinesis"`: the stream, and where it and the lease table are.

`LeasedStreamSettings` holds what every stream read as leased shards accepts
(Kinesis and DynamoDB Streams): the region, the endpoints and the lease settings.
Unset endpoints fall back to the standard AWS_ENDPOINT_URL_<SERVICE> variables,
then to AWS itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from worker.config_base import SourceSettings


class LeasedStreamSettings(SourceSettings):
    region: str | None = None
    endpoint_url: str | None = None
    lease_endpoint_url: str | None = None
    lease_table: str | None = None
    lease_duration_s: Annotated[float, Field(ge=1, le=3600)] = 10
    #: A lease asked for (a graceful hand-off) but not handed over within this long is
    #: taken by force. Keep it above lease_duration_s + runtime.rebalance_timeout_s (the
    #: longest an owner drains); unset: lease_duration_s + 20, for the default drain.
    handoff_timeout_s: Annotated[float, Field(gt=0, le=7200)] | None = None

    @property
    def lease_endpoint(self) -> str | None:
        """Where the lease table is (a DynamoDB endpoint)."""
        return self.lease_endpoint_url

    @property
    def handoff_deadline_s(self) -> float:
        return self.handoff_timeout_s or self.lease_duration_s + 20

    @property
    def loop_delay_budget_s(self) -> float:
        """Leases are renewed every third of their duration."""
        return self.lease_duration_s / 3


class KinesisSourceConfig(LeasedStreamSettings):
    kind: Literal["kinesis"] = "kinesis"
    stream_name: str | None = None
    stream_arn: str | None = None

    @property
    def stream(self) -> str:
        return self.stream_name or (self.stream_arn or "").rsplit("/", 1)[-1]

    @model_validator(mode="after")
    def _needs_stream(self) -> KinesisSourceConfig:
        if not (self.stream_name or self.stream_arn):
            raise ValueError("source.stream_name: a kinesis source needs stream_name or stream_arn")
        return self
