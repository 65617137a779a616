"""Which AWS call failures are worth retrying: throttles, server errors, a network that failed.

Kinesis and DynamoDB calls fail in two ways. Some failures pass (a throttle, a
500, a dropped connection, a timeout): the caller waits with the shared
backoff and tries again. The rest will not pass by waiting (access denied, a
stream or table that does not exist, a malformed request): the caller stops
and says so, and its supervisor ends the worker, since a worker that cannot
read or keep its leases must not look healthy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from worker.backoff import Backoff

log = logging.getLogger("worker.source.kinesis")

#: How long the start tries a call again that failed in a way that passes.
START_RETRY_S = 60.0
START_BACKOFF = Backoff(250, 10_000)

#: Error codes of a throttled call (Kinesis, DynamoDB and KMS spell them differently).
THROTTLE_CODES = frozenset({
    "ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException",
    "Throttling", "RequestLimitExceeded", "TooManyRequestsException", "KMSThrottlingException",
})  # fmt: skip
#: Error codes of a server-side failure that a later call may not meet.
SERVER_CODES = frozenset({
    "InternalFailure", "InternalFailureException", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
    "TransactionConflictException",
})  # fmt: skip

#: Failures of the connection itself (botocore wraps aiohttp's, but not every one of them).
NETWORK_ERRORS = (HTTPClientError, BotoConnectionError, aiohttp.ClientError, OSError, TimeoutError)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ClientError (None for any other exception)."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def retryable(exc: BaseException) -> bool:
    """True for a failure that may pass by waiting; False for one that will not."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in THROTTLE_CODES or code in SERVER_CODES or status >= 500
    return isinstance(exc, NETWORK_ERRORS)


async def until_it_answers(step: Callable[[], Awaitable[object]]) -> None:
    """A start-up call that failed in a way that passes (a dropped connection, a
    throttle) is tried again for up to `START_RETRY_S`, one WARNING a try: a
    connection reset at start used to end the worker with exit 1 (seen under the
    rolling-restart faults). Failures that will not pass are raised at once."""
    started, attempt = time.monotonic(), 0
    while True:
        try:
            await step()
            return
        except Exception as exc:
            attempt += 1
            left = START_RETRY_S - (time.monotonic() - started)
            if not retryable(exc) or left <= 0:
                raise
            delay = min(START_BACKOFF.delay_s(attempt), left)
            log.warning(
                "event=start_retry step=%s attempt=%d error=%r retry_in_s=%.1f",
                getattr(step, "__name__", "start"), attempt,
                f"{type(exc).__name__}: {exc}", delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
