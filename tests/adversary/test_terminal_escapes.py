"""What `worker status` and `worker dlq` print comes from handlers and records: an error
message quoting a record with an escape sequence cleared the reader's terminal, and one
with a newline forged a line of output, and a lone surrogate made `print` raise
UnicodeEncodeError. Control characters and surrogates are now printed as escapes."""

from __future__ import annotations

import asyncio
import json
import logging

from worker.cli import main
from worker.observe.metrics import Metrics
from worker.testing import MemoryBroker, running_worker, wait_until

ESCAPES = "\x1b[2J\x1b[H\nt-1 retrying position 0 (1 records): forged\r\u202e"
HOSTILE = ESCAPES + " \udcff"  # a JSON file cannot hold the lone surrogate: `dlq` gets ESCAPES


async def hostile_handler(batch) -> None:
    raise ValueError(f"bad reading {HOSTILE}")


async def test_worker_status_prints_a_hostile_error_as_escapes(capsys, caplog):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", b"x")
    settings = {"metrics": {"enabled": True, "listen": "127.0.0.1:0"}}
    caplog.set_level(logging.ERROR)
    async with running_worker(hostile_handler, broker, ["t"], settings, metrics=Metrics()) as w:
        await wait_until(lambda: w.endpoints is not None and w.endpoints.port is not None)
        await wait_until(lambda: any(p.retrying for p in w.partition_stats()))
        url = f"http://127.0.0.1:{w.endpoints.port}"
        assert await asyncio.to_thread(main, ["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "bad reading" in out
    assert not any(c in out for c in "\x1b\r\u202e")
    assert "\\x1b[2J" in out and "\\u202e" in out and "\\udcff" in out
    assert not any(line.startswith("t-1 retrying") for line in out.splitlines())


def test_worker_dlq_prints_hostile_keys_and_errors_as_escapes(tmp_path, capsys):
    path = tmp_path / "dlq.jsonl"
    event = {"failed_at_ms": 1, "partition": "t-0", "error": {"type": "ValueError",
             "message": ESCAPES}, "records": [{"offset": 1, "key": "G1sySg=="}]}  # fmt: skip
    path.write_text(json.dumps(event) + "\n")  # the key is "\x1b[2J" too
    assert main(["dlq", "--from", f"file://{path}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert out.count("\n") == 3  # header, one record, the count
    assert main(["dlq", "--from", f"file://{path}", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["error_message"] == ESCAPES  # JSON carries it exactly, escaped by JSON itself
