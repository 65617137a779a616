"""The Kinesis start tries a call again when its failure passes, and only then.

Under the rolling-restart faults a restarted worker met a reset connection on its
first call and exited 1. The step below raises what botocore raises for that.
"""

from __future__ import annotations

import asyncio

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from worker.sources.kinesis import transient as source


def _step(failures: list[Exception]):
    calls = []

    async def step() -> None:
        calls.append(1)
        if failures:
            raise failures.pop(0)

    return step, calls


def test_a_reset_connection_at_start_is_tried_again(caplog: pytest.LogCaptureFixture):
    reset = ConnectionClosedError(endpoint_url="http://127.0.0.1:1/")
    step, calls = _step([reset])
    asyncio.run(source.until_it_answers(step))
    assert len(calls) == 2
    assert "event=start_retry" in caplog.text


def test_a_failure_that_will_not_pass_is_raised_at_once():
    missing = ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "DescribeStream")
    step, calls = _step([missing])
    with pytest.raises(ClientError):
        asyncio.run(source.until_it_answers(step))
    assert len(calls) == 1


def test_the_retries_end_when_the_time_is_up(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(source, "START_RETRY_S", 0.3)
    resets = [ConnectionClosedError(endpoint_url="http://127.0.0.1:1/") for _ in range(100)]
    step, calls = _step(resets)
    with pytest.raises(ConnectionClosedError):
        asyncio.run(source.until_it_answers(step))
    assert 2 <= len(calls) < 100
