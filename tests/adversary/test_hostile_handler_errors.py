"""A handler's exception is the handler's object, and may be hostile.

An exception whose `__str__` raised, or whose attribute lookup raised (which
`traceback.format_exception` and `raised_at` do), escaped the failure policy:
the partition's task crashed and the worker exited with status 1, and a
restart crashed on the same record again. Now such an error fails its batch
like any other: retried, then dead-lettered, and the partition goes on.
"""

from __future__ import annotations

import pytest

from tests.unit.test_failure_policy import RecordingDestination
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of me fails")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of me fails")


class LookupRaises(Exception):
    """Every missing attribute (`__notes__`, `traceback`) raises instead of AttributeError."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"no {name} for you")


@pytest.mark.parametrize("error", [StrRaises, LookupRaises], ids=["str", "getattr"])
@pytest.mark.parametrize("concurrency", ["async", "thread"])
async def test_a_hostile_exception_fails_its_batch_and_the_partition_goes_on(error, concurrency):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for value in (b"ok", b"bad", b"ok"):
        broker.produce("t", value, partition=0)

    def handle(batch) -> None:
        if any(r.value == b"bad" for r in batch.records):
            raise error("hostile")

    async def handle_async(batch) -> None:
        handle(batch)

    dlq = RecordingDestination()
    settings = {
        "batching": {"batch_size": 1},
        "errors": {"maximum_retry_attempts": 1},
    }
    handler = handle_async if concurrency == "async" else handle
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as worker:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]) or bool(worker.exit_code))
        assert not worker.exit_code, "the worker crashed"
    (event,) = dlq.events
    assert [r.value for r in event.records] == [b"bad"]
    assert event.error_type == error.__name__
    assert event.error_message and event.traceback


async def test_a_handler_process_error_is_said_to_be_raised_in_the_handler_not_the_pool(caplog):
    """The pool raises a child's error `from RemoteTraceback(text)`; `raised_at` read only the
    exception's own frames (the pool's), so every process-mode failure said
    `at=worker/handling/process_pool.py:...`, and one traceback stood for all its errors."""
    from tests.unit import process_handlers

    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"bad", partition=0)
    settings = {
        "handler": {"target": "tests.unit.process_handlers:raises_on_bad",
                    "concurrency": "process", "processes": 1},
        "errors": {"maximum_retry_attempts": 0},
    }  # fmt: skip
    dlq = RecordingDestination()
    caplog.set_level("WARNING", logger="worker.failures")
    async with running_worker(process_handlers.raises_on_bad, broker, ["t"], settings,
                              destination=dlq):  # fmt: skip
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=60)
    code = process_handlers.raises_on_bad.__code__
    line = code.co_firstlineno + 3
    (event,) = dlq.events
    assert event.where == f"tests/unit/process_handlers.py:{line}"
    assert f"at=tests/unit/process_handlers.py:{line}" in caplog.text


async def test_a_megabyte_error_message_is_not_logged_whole_on_every_attempt(caplog):
    """A handler that put the record in its message logged it whole twice per attempt
    (the failure line, the traceback line): a megabyte record, unlimited retries."""
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"x" * 1_000_000, partition=0)

    async def handler(batch) -> None:
        raise ValueError(f"cannot parse {batch.records[0].value!r}")

    caplog.set_level("WARNING", logger="worker.failures")
    async with running_worker(handler, broker, ["t"]) as worker:
        await wait_until(lambda: any(p.retrying and p.retrying[0].attempts >= 3
                                     for p in worker.partition_stats()))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert sum("event=invocation_failed" in m for m in lines) >= 3
    assert sum("event=invocation_traceback" in m for m in lines) == 1
    assert max(map(len, lines)) < 20_000
    assert all("characters]..." in m for m in lines if "error=" in m)


async def test_an_error_a_handler_process_cannot_send_back_fails_only_its_own_batch():
    """pebble declared the whole pool broken when a child's return value could not be
    unpickled: every call in the pool failed, and the other partitions' healthy records
    were retried and, with limited retries, dead-lettered (or dropped) with it."""
    from tests.unit import process_handlers

    broker = MemoryBroker()
    broker.create_topic("t", 3)
    broker.produce("t", b"bad", partition=0)
    broker.produce("t", b"lambda", partition=1)
    for _ in range(8):
        broker.produce("t", b"ok", partition=2)
    settings = {
        "handler": {"target": "tests.unit.process_handlers:unportable_on_bad",
                    "concurrency": "process", "processes": 3},
        "batching": {"batch_size": 1},
        "errors": {"maximum_retry_attempts": 3, "retry_backoff_ms": [50, 100]},
    }  # fmt: skip
    dlq = RecordingDestination()
    handler = process_handlers.unportable_on_bad
    async with running_worker(handler, broker, ["t"], settings, destination=dlq) as worker:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]), timeout_s=60)
        healthy_errors = worker.metrics.batches.labels("memory", "t-2", "error").value
    assert healthy_errors == 0
    assert sorted(e.partition for e in dlq.events) == ["t-0", "t-1"]
    assert {e.error_type for e in dlq.events} == {"HandlerResultNotPortable"}
    by_partition = {e.partition: e for e in dlq.events}
    assert "NeedsTwoArgs" in by_partition["t-0"].error_message
    assert by_partition["t-0"].where.startswith("tests/unit/process_handlers.py:")
    assert "function" in by_partition["t-1"].error_message


def test_a_handler_installed_in_site_packages_is_the_users_code():
    """Deployed with `pip install`, every frame of the handler was "an installed
    package's", so `at=` named the innermost frame of all: the stdlib's json."""
    import concurrent.futures.thread
    import json
    import sysconfig

    from worker.handling import handler as worker_handler
    from worker.handling import invoker
    from worker.handling.raised_at import raised_at

    installed = sysconfig.get_paths()["purelib"]
    error = ValueError("bad reading")
    error.traceback = (  # as a thread-mode traceback reads (as text, like a process's)
        "Traceback (most recent call last):\n"
        f'  File "{invoker.__file__}", line 163, in _result\n'
        f'  File "{concurrent.futures.thread.__file__}", line 58, in run\n'
        f'  File "{worker_handler.__file__}", line 61, in call_sync\n'
        f'  File "{installed}/acme_iot/handler.py", line 12, in handle\n'
        f'  File "{installed}/acme_iot/parse.py", line 7, in reading\n'
        f'  File "{installed}/orjson_like/__init__.py", line 3, in loads\n'
        f'  File "{json.__file__}", line 346, in loads\n'
        "ValueError: bad reading\n"
    )
    assert raised_at(error).endswith("site-packages/acme_iot/parse.py:7")
