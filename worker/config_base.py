"""The base of every configuration model, and the settings all sources share.

Lives below both `worker.config` and the sources' own config modules, so a
source package can define its model without importing the whole schema.
Every model forbids unknown keys: a typo must fail at start, not be ignored.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(Section):
    """What every source kind accepts; each kind adds its own keys and a `kind` literal."""

    #: False for a source that only exists inside a test process (the memory log).
    standalone: ClassVar[bool] = True

    group_id: str = "streamworker"
    starting_position: Literal["trim_horizon", "latest", "at_timestamp"] = "trim_horizon"
    starting_position_timestamp: Annotated[float, Field(ge=0)] = 0
    commit_interval_ms: Annotated[int, Field(ge=0, le=60_000)] = 100
    #: The ARN put in Lambda-style events (MSK cluster, Kinesis stream).
    event_source_arn: str | None = None

    @property
    def loop_delay_budget_s(self) -> float:
        """How long the event loop may stall before the source's liveness is at risk."""
        return 3.0
