"""The `context` a Lambda handler receives; its deadline comes from handler.timeout_s."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.config import HandlerConfig


def _request_id() -> str:
    """A version 4 UUID, as Lambda's request ids are. From `random` rather than
    `uuid.uuid4()`: `os.urandom` lets go of the GIL, and getting it back behind the poller
    held each Lambda-style call up (4% of a Lambda-style worker's thread samples, in
    py-spy). An id needs to be unique, not secret: `random` is seeded from the OS and
    reseeded in a forked handler process."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


@dataclass
class LambdaContext:
    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: str  # a string, as the Python runtime gives it
    log_group_name: str
    log_stream_name: str
    deadline: float  # time.monotonic() at which the invocation times out
    aws_request_id: str = field(default_factory=_request_id)
    identity: None = None
    client_context: None = None

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self.deadline - time.monotonic()) * 1000), 0)


class ContextFactory:
    """Makes one context per invocation: a fresh request id and deadline each time."""

    def __init__(self, config: HandlerConfig) -> None:
        self._config = config
        name = config.function_name
        self._arn = f"arn:aws:lambda:{config.aws_region}:000000000000:function:{name}"
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        self._stream = f"{day}/[$LATEST]{uuid.uuid4().hex}"

    def __call__(self) -> LambdaContext:
        c = self._config
        return LambdaContext(
            function_name=c.function_name,
            function_version="$LATEST",
            invoked_function_arn=self._arn,
            memory_limit_in_mb=str(c.memory_limit_in_mb),
            log_group_name=f"/aws/lambda/{c.function_name}",
            log_stream_name=self._stream,
            deadline=time.monotonic() + c.timeout_s,
        )
