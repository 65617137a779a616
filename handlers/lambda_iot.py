"""An AWS Lambda handler for IoT telemetry on Kafka, exactly as it would run on AWS.

Point `handler.target` at `handlers.lambda_iot:lambda_handler` with
`handler.style = "lambda"` and it runs unchanged under the worker: it gets
the self-managed Kafka event (records keyed "topic-partition", base64
values) and reports unreadable readings as batch item failures.
"""

import base64
import json
import logging

logger = logging.getLogger()


def lambda_handler(event, context):
    failures = []
    devices = set()
    for partition_key, records in event["records"].items():
        for record in records:
            try:
                reading = json.loads(base64.b64decode(record["value"]))
                devices.add(reading["device_id"])
            except (ValueError, KeyError):
                failures.append(
                    {"itemIdentifier": {"partition": partition_key, "offset": record["offset"]}}
                )
    logger.info(
        "request %s: %d devices, %d failures, %d ms left",
        context.aws_request_id,
        len(devices),
        len(failures),
        context.get_remaining_time_in_millis(),
    )
    return {"batchItemFailures": failures}
