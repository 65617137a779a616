"""The status page, /status.json and `worker status`, from a worker on the memory source."""

import json
import urllib.request

from worker.cli import main
from worker.observe.metrics import Metrics
from worker.observe.status import RateSampler, render_text
from worker.testing import MemoryBroker, fully_committed, running_worker, wait_until


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read()


async def test_status_json_page_and_cli_show_partitions_committed_offsets_and_errors(capsys):
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(100):
        broker.produce("t", b"%d" % i, partition=i % 2)
    calls = []

    async def handler(batch):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first call fails")

    settings = {"metrics": {"enabled": True, "listen": "127.0.0.1:0"}}
    async with running_worker(handler, broker, ["t"], settings, metrics=Metrics()) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        await wait_until(lambda: w.endpoints is not None and w.endpoints.port is not None)
        port = w.endpoints.port
        status = json.loads(await _in_thread(get, port, "/status.json"))
        page = (await _in_thread(get, port, "/")).decode()
        assert await _in_thread(main, ["status", "--url", f"http://127.0.0.1:{port}"]) == 0
    assert status["ready"] is True
    assert [p["partition"] for p in status["partitions"]] == ["t-0", "t-1"]
    assert [p["committed"] for p in status["partitions"]] == [50, 50]
    assert [p["lag"] for p in status["partitions"]] == [0, 0]
    assert status["last_errors"][0]["error"] == "ValueError: first call fails"
    assert "<title>streamworker</title>" in page and "status.json" in page
    assert "cdn" not in page.lower() and "src=" not in page  # self-contained
    out = capsys.readouterr().out
    assert "t-0" in out and "ValueError: first call fails" in out


async def _in_thread(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)


def test_rates_come_from_committed_counts_over_the_sampled_window():
    sampler = RateSampler()
    sampler.sample({"t-0": 0.0}, now=10.0)
    sampler.sample({"t-0": 500.0}, now=11.0)
    sampler.sample({"t-0": 2000.0}, now=12.0)
    assert sampler.rates() == {"t-0": 1000.0}


def test_status_cli_reports_an_unreachable_worker(capsys):
    assert main(["status", "--url", "http://127.0.0.1:1"]) == 1
    assert "cannot reach a worker" in capsys.readouterr().err


def test_text_rendering_names_every_column():
    text = render_text(
        {
            "source": "kafka", "group": "g", "handler": "h:f", "ready": False,
            "readiness": "waiting", "uptime_s": 1.0, "inflight_batches": 0,
            "partitions": [{"partition": "t-0", "committed": None, "lag": None,
                            "iterator_age_s": 0.0, "rate_per_s": 0.0, "buffered": 0,
                            "paused": True, "dead_lettered": 0}],
            "last_errors": [],
        }
    )  # fmt: skip
    assert "committed" in text and "t-0" in text and "yes" in text
