"""Example Lambda handler for a DynamoDB stream: the `devices` table's changes.

Written as for AWS Lambda (a DynamoDB trigger with ReportBatchItemFailures), so
it runs unchanged on streamworker with `handler.style = "lambda"`: a device
registered (INSERT), its firmware changed (MODIFY), it was removed (REMOVE, or
expired by Time to Live when `userIdentity` says so). A change it cannot read
(a firmware version that is not `MAJOR.MINOR[.PATCH]`) is reported in
`batchItemFailures` by its sequence number: Lambda (and streamworker) retry from
it, and after the configured attempts send it to the on-failure destination.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("handlers.device_registry")

_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    counts = {"registered": 0, "updated": 0, "removed": 0, "expired": 0}
    for record in event["Records"]:
        try:
            counts[change(record)] += 1
        except (KeyError, ValueError) as exc:
            log.warning("cannot read change %s: %s", record["dynamodb"]["SequenceNumber"], exc)
            # From here on, as Lambda does: the rest of the batch is retried with it.
            return {"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]}
    log.info("devices: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return {"batchItemFailures": []}


def change(record: dict[str, Any]) -> str:
    stream = record["dynamodb"]
    device = stream["Keys"]["device_id"]["S"]
    if record["eventName"] == "INSERT":
        firmware = _firmware(stream["NewImage"])
        log.debug("registered %s with firmware %s", device, firmware)
        return "registered"
    if record["eventName"] == "MODIFY":
        old, new = _firmware(stream["OldImage"]), _firmware(stream["NewImage"])
        if old != new:
            log.debug("%s firmware %s -> %s", device, old, new)
        return "updated"
    ttl = record.get("userIdentity", {}).get("principalId") == "dynamodb.amazonaws.com"
    return "expired" if ttl else "removed"


def _firmware(image: dict[str, Any]) -> str:
    version = image["firmware"]["S"]
    if not _VERSION.match(version):
        raise ValueError(f"firmware {version!r} is not MAJOR.MINOR[.PATCH]")
    return version
