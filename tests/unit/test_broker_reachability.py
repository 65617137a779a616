"""The worker's own outage lines: one WARNING when a broker goes, one INFO when it is back."""

from __future__ import annotations

import logging

import pytest

from worker.sources.kafka.reach import Reachability


def test_a_broker_away_is_named_once_and_its_return_gives_the_duration(
    caplog: pytest.LogCaptureFixture,
):
    now = [100.0]
    gauge: list[int] = []
    reach = Reachability(on_change=gauge.append, clock=lambda: now[0], wall=lambda: 0.0)
    up = {1: ("h:1", True), 2: ("h:2", True), 3: ("h:3", True)}
    with caplog.at_level(logging.INFO, logger="worker"):
        reach.observe(up)
        for _ in range(5):  # a broker away for five rounds
            reach.observe({**up, 2: ("h:2", False)})
            now[0] += 2
        reach.observe({**up, 2: ("h:2", False), 3: ("h:3", False)})  # a second one goes
        now[0] += 2
        reach.observe(up)
    lines = [r.getMessage() for r in caplog.records]
    away = [line for line in lines if "event=brokers_unreachable" in line]
    assert len(away) == 2
    assert "brokers=2@h:2 " in away[0] and "since=1970-01-01T00:00:00+00:00" in away[0]
    assert "brokers=3@h:3 " in away[1]
    (back,) = [line for line in lines if "event=brokers_reachable" in line]
    assert "brokers=2@h:2,3@h:3" in back and "after_s=12.0" in back
    assert gauge == [1, 2, 0]
    assert reach.away() == []


def test_nothing_is_said_while_every_broker_answers(caplog: pytest.LogCaptureFixture):
    reach = Reachability()
    with caplog.at_level(logging.INFO, logger="worker"):
        for _ in range(3):
            reach.observe({1: ("h:1", True)})
    assert not [r for r in caplog.records if "brokers_" in r.getMessage()]


async def test_a_probe_that_cannot_bootstrap_names_the_bootstrap_servers(
    caplog: pytest.LogCaptureFixture,
):
    """Nothing listens on the port: the probe says so once, and keeps trying."""
    import asyncio
    import socket

    from worker.sources.kafka.reach import BrokerProbe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said = asyncio.Event()
    reach = Reachability(on_change=lambda away: said.set())
    probe = BrokerProbe({"bootstrap_servers": f"127.0.0.1:{port}"}, reach, interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="worker"):
        task = asyncio.create_task(probe.run())
        await asyncio.wait_for(said.wait(), 10)
        await asyncio.sleep(0.3)  # several more failed rounds: still one line
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    away = [r.getMessage() for r in caplog.records if "brokers_unreachable" in r.getMessage()]
    assert len(away) == 1 and f"bootstrap:127.0.0.1:{port}" in away[0]
