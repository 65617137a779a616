"""A Lambda tumbling-window handler: per-device average temperature per window.

Run with `handler.style = "lambda"` and `batching.tumbling_window_s = 60`.
Each invocation folds its readings into `state` ({device: [sum, count]});
the final invoke of a window turns the state into averages (here: logged and
returned in the state, where a real pipeline would store them).
"""

import base64
import json
import logging

logger = logging.getLogger()


def averages(state):
    return {device: round(total / count, 6) for device, (total, count) in state.items()}


def lambda_handler(event, context):
    state = dict(event.get("state") or {})
    if event["isFinalInvokeForWindow"]:
        logger.info("window %s..%s averages %s", event["window"]["start"],
                    event["window"]["end"], averages(state))  # fmt: skip
        return {"state": state}
    for records in event["records"].values():
        for record in records:
            reading = json.loads(base64.b64decode(record["value"]))
            total, count = state.get(reading["device_id"], (0.0, 0))
            state[reading["device_id"]] = [total + reading["metrics"]["temperature"], count + 1]
    return {"state": state}
