"""`worker check-config --connect` for the streams read as leased shards (Kinesis, DynamoDB
Streams): the stream answers with its shards, and the lease table can be reached.

One call each, bounded, with no retry beyond botocore's own: the point is a quick
`error:` line (a misspelt stream, an endpoint nobody listens on, denied access),
not to ride out an outage as `worker run` does. A lease table that does not exist
yet is fine: the worker creates it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from worker.sources.base import SourceStartError
from worker.sources.kinesis.api import ShardApi
from worker.sources.kinesis.config import LeasedStreamSettings
from worker.sources.kinesis.transient import error_code

CHECK_CLIENT = AioConfig(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1})


async def check_stream(api: ShardApi, config: LeasedStreamSettings, session: Any) -> None:
    table = config.lease_table or f"{config.group_id}-leases"
    async with AsyncExitStack() as stack:
        stream = await stack.enter_async_context(
            session.create_client(api.service, region_name=config.region,
                                  endpoint_url=config.endpoint_url, config=CHECK_CLIENT)
        )  # fmt: skip
        leases = await stack.enter_async_context(
            session.create_client("dynamodb", region_name=config.region,
                                  endpoint_url=config.lease_endpoint, config=CHECK_CLIENT)
        )  # fmt: skip
        try:
            await api.open(stream)
            async for _ in api.shards():
                break
        except (ClientError, BotoCoreError) as exc:
            raise SourceStartError(f"{api.name}: stream {api.stream}: {_reason(exc)}") from None
        try:
            await leases.describe_table(TableName=table)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":  # else: created at start
                raise SourceStartError(f"{api.name}: lease table {table}: {_reason(exc)}") from None
        except BotoCoreError as exc:
            raise SourceStartError(f"{api.name}: lease table {table}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The failure on one line (botocore's parameter errors span several)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
