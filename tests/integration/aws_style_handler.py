"""A handler written for AWS Lambda's Kafka event source, used unchanged by the tests.

Readings flagged "flaky" fail on their first attempt and succeed afterwards,
so the test can watch the worker retry exactly what Lambda would retry.
"""

import base64
import json

calls = []  # offsets per invocation, for the test
contexts = []
_attempts = {}


def lambda_handler(event, context):
    contexts.append((context.aws_request_id, context.get_remaining_time_in_millis()))
    failures = []
    for partition, records in event["records"].items():
        calls.append([r["offset"] for r in records])
        for record in records:
            reading = json.loads(base64.b64decode(record["value"]))
            key = (partition, record["offset"])
            _attempts[key] = _attempts.get(key, 0) + 1
            if reading.get("flaky") and _attempts[key] == 1:
                failures.append(
                    {"itemIdentifier": {"partition": partition, "offset": record["offset"]}}
                )
    return {"batchItemFailures": failures}
