"""The status page, /status.json and `worker status`, from a worker on the memory source."""

import asyncio
import json
import urllib.error
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


def _get_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_an_error_quoting_a_record_shows_its_type_line_and_200_characters_at_most(capsys):
    """A handler whose message holds the record's value (1000 characters): the page,
    /status.json and `worker status` show the type, the raising file:line and 200
    characters of the message, never the whole value."""
    value = "".join(f"{i:04d}" for i in range(250)).encode()  # 1000 characters, no repeats
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    broker.produce("t", value, partition=0)
    release = []

    async def handler(batch):
        if not release:
            raise ValueError(f"cannot parse {batch.records[0].value.decode()}")

    settings = {"metrics": {"enabled": True, "listen": "127.0.0.1:0"},
                "errors": {"retry_backoff_ms": [5, 20]}}  # fmt: skip
    async with running_worker(handler, broker, ["t"], settings, metrics=Metrics()) as w:
        await wait_until(lambda: w.endpoints is not None and w.endpoints.port is not None)
        port = w.endpoints.port

        async def retrying() -> bool:
            status = json.loads(await _in_thread(get, port, "/status.json"))
            return bool(status["partitions"] and status["partitions"][0]["retrying"])

        for _ in range(200):
            if await retrying():
                break
            await asyncio.sleep(0.02)
        raw = (await _in_thread(get, port, "/status.json")).decode()
        page = (await _in_thread(get, port, "/")).decode()
        assert await _in_thread(main, ["status", "--url", f"http://127.0.0.1:{port}"]) == 0
        release.append(1)
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
    status = json.loads(raw)
    (error,) = status["last_errors"]
    retry = status["partitions"][0]["retrying"]
    for shown in (error, retry):
        assert shown["error"].startswith("ValueError: cannot parse 0000")
        assert "(1013 characters, cut)" in shown["error"]
        assert "test_status.py:" in shown["where"], shown["where"]
    out = capsys.readouterr().out
    text = value.decode()
    for served in (raw, page, out):  # no 201 characters of the value in a row, anywhere
        assert not any(text[i : i + 201] in served for i in range(len(text) - 200))
    assert text[:187] in out and "test_status.py:" in out


async def test_status_page_off_serves_only_metrics_and_the_probes(capsys):
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    settings = {"metrics": {"enabled": True, "listen": "127.0.0.1:0", "status_page": False}}

    async def handler(batch):
        return None

    async with running_worker(handler, broker, ["t"], settings, metrics=Metrics()) as w:
        await wait_until(lambda: w.endpoints is not None and w.endpoints.port is not None)
        port = w.endpoints.port
        codes = {p: await _in_thread(_get_status, port, p)
                 for p in ("/", "/status.json", "/metrics", "/healthz", "/readyz")}  # fmt: skip
        assert await _in_thread(main, ["status", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert "metrics.status_page = false" in capsys.readouterr().err
    assert codes["/"] == 404 and codes["/status.json"] == 404
    assert codes["/metrics"] == 200
    assert codes["/healthz"] in (200, 503) and codes["/readyz"] in (200, 503)


async def test_a_crashed_tasks_reason_on_readiness_is_cut_like_every_shown_error():
    """/readyz is served even with the status page off: a task that died of an error quoting
    a record showed the whole message there."""
    import asyncio

    from worker.runtime.tasks import TaskSupervisor

    value = "v" * 1000
    exits: list[int] = []
    tasks = TaskSupervisor(exits.append)

    async def dies() -> None:
        raise ValueError(f"bad record {value}")

    task = tasks.spawn(dies(), "reader")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert exits == [1] and tasks.crashed is not None
    assert tasks.crashed.startswith("task reader died: ValueError: bad record ")
    assert "v" * 201 not in tasks.crashed and "characters, cut" in tasks.crashed
