"""A `devices` table with a NEW_AND_OLD_IMAGES stream on moto's server, and a known history of
changes: per item, inserts, updates and deletes in an order the tests can check."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from aiobotocore.session import get_session

from scripts.emulators import Emulator
from worker.config import WorkerConfig


async def make_table(dynamodb: Emulator) -> str:
    table = f"devices-{uuid.uuid4().hex[:6]}"
    async with client(dynamodb) as ddb:
        await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
    return table


def client(dynamodb: Emulator) -> Any:
    return get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=dynamodb.url
    )


def streams_client(dynamodb: Emulator) -> Any:
    return get_session().create_client(
        "dynamodbstreams", region_name="us-east-1", endpoint_url=dynamodb.url
    )


def history(items: int, changes: int) -> dict[str, list[tuple[str, int]]]:
    """Per device, its changes in order as (eventName, version): an insert, updates, and every
    fourth change a delete (the next change inserts it again)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for k in range(items):
        steps, present, version = [], False, 0
        for i in range(changes // items):
            if not present:
                steps.append(("INSERT", version))
                present = True
            elif i % 4 == 3:
                steps.append(("REMOVE", version))
                present = False
            else:
                version += 1
                steps.append(("MODIFY", version))
        out[f"dev-{k:03d}"] = steps
    return out


async def apply(dynamodb: Emulator, table: str, changes: dict[str, list[tuple[str, int]]]) -> None:
    """Make the changes in rounds (each device's next change), 25 a BatchWriteItem call, one
    call at a time: moto numbers stream records by the count it holds, so concurrent writes
    leave gaps that its iterators then read twice (an emulator artifact, not DynamoDB's)."""
    async with client(dynamodb) as ddb:
        for round_ in itertools.zip_longest(*changes.values()):
            requests = [_request(device, *step)
                        for device, step in zip(changes, round_, strict=True) if step]  # fmt: skip
            for start in range(0, len(requests), 25):
                chunk = requests[start : start + 25]
                answer = await ddb.batch_write_item(RequestItems={table: chunk})
                assert not answer.get("UnprocessedItems")


def _request(device: str, event: str, version: int) -> dict[str, Any]:
    if event == "REMOVE":
        return {"DeleteRequest": {"Key": {"device_id": {"S": device}}}}
    item = {
        "device_id": {"S": device},
        "version": {"N": str(version)},
        "firmware": {"S": f"1.{version}"},
        "blob": {"B": b"\x00\xff"},
    }
    return {"PutRequest": {"Item": item}}


def config(dynamodb: Emulator, table: str, leases: str, **sections: Any) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "source": {
                "kind": "dynamodb",
                "table_name": table,
                "region": "us-east-1",
                "endpoint_url": dynamodb.url,
                "lease_table": leases,
                "lease_duration_s": 3,
            },
            "batching": {"batch_size": 100, "maximum_batching_window_ms": 50},
            "metrics": {"enabled": False},
            "runtime": {"log_format": "text"},
            **sections,
        }
    )


def change_of(record: Any) -> tuple[str, str, int]:
    """(device, eventName, version) of a native DynamoDB record."""
    image = record.new_image or record.old_image
    return record.keys["device_id"]["S"], record.event_name, int(image["version"]["N"])
