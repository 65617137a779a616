"""A handler whose file's path holds bytes that are not UTF-8 (Python names it with lone
surrogates): `where` was the one error field not made UTF-8-safe, so the file destination
could not write the event as JSON, on any attempt, and the partition waited for ever."""

from __future__ import annotations

import json

from worker.destinations.file import FileDestination
from worker.testing import MemoryBroker, running_worker, wait_until

SOURCE = "def handle(batch):\n    raise ValueError('unreadable reading')\n"


async def test_a_handler_path_that_is_not_utf8_is_still_dead_lettered(tmp_path, caplog):
    namespace: dict = {}
    exec(compile(SOURCE, "/srv/handlers/r\udcfcckgabe.py", "exec"), namespace)
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"x")
    path = tmp_path / "dlq.jsonl"
    settings = {"errors": {"maximum_retry_attempts": 0, "on_failure": f"file://{path}"}}
    destination = FileDestination(str(path))
    async with running_worker(namespace["handle"], broker, ["t"], settings,
                              destination=destination):  # fmt: skip
        await wait_until(
            lambda: broker.committed("test", "t", 0) == 1 or "destination_failed" in caplog.text
        )
    assert "event=destination_failed" not in caplog.text
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["error"]["at"] == "/srv/handlers/r\\udcfcckgabe.py:2"
