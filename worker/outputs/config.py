"""The `[outputs]` section: where `batch.send` writes, and how."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from worker.config_base import Section


class OutputsConfig(Section):
    #: The topics a handler may send to (checked at start: the worker creates none);
    #: empty: `batch.send` is off.
    topics: list[str] = []
    #: Default: the Kafka source's servers (and its security settings).
    bootstrap_servers: list[str] = []
    #: Outputs and consumed offsets in one Kafka transaction (Kafka source only).
    exactly_once: bool = False
    #: The transactional id's prefix (exactly_once); default: the group id.
    transactional_id: str = ""
    #: The largest output `batch.send` takes (value, key and headers): a larger one fails
    #: its invoke. At most the output topics' `max.message.bytes`.
    max_message_bytes: Annotated[int, Field(ge=1024, le=64 * 1024**2)] = 1_000_000
    linger_ms: Annotated[int, Field(ge=0, le=10_000)] = 5
    #: A produce (or transaction) not acknowledged in this long fails; retried next round.
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10
