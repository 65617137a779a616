"""Aimed faults on the real broker: kill -9 and SIGTERM while a batch is inside the handler.

An unaimed kill mostly lands between batches, where committing early or late
looks the same, so it lets through a worker that commits a batch before its
handler ran (issue 13). Here the recording handler holds chosen batches
(`RECORD_HOLD`): it says which batch it is in, then waits for the test. With
every lane of every partition held, the test passes a commit barrier (a record
on a second topic, committed, so every commit the worker meant to make has
reached the broker), reads the committed offsets and asserts none passes a
held batch, then kills the worker with SIGKILL (the fault, injected at the
process boundary). A new worker finishes the topic: nothing lost, and what is
handled twice is only what was in flight. The dead-letter test blocks the
destination instead (a directory stands where the DLQ file goes, so every
write fails at the boundary); the shutdown test sends SIGTERM to a held batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from zlib import crc32

import orjson
import pytest

from tests.integration.kafka_helpers import (
    CommitBarrier,
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    on_clients,
    read_gate,
    read_handled,
    scrape,
    unique,
    write_config,
)

pytestmark = pytest.mark.kafka
PARTITIONS = 4
RECORDS = 8000
KEYS = 50  # produce_keyed's default: key kN goes to partition N % PARTITIONS
BATCH = 100
BUFFERED = 1000
FETCH = 500
#: A held batch must not time out (and be retried as pieces) on a slow machine.
HELD = {"timeout_s": 300}


def lanes_in_use(partition: int, lanes: int) -> int:
    """How many key lanes of `partition` get records (crc32 of the key, as the worker routes)."""
    keys = [f"k{k}".encode() for k in range(KEYS) if k % PARTITIONS == partition]
    return len({crc32(key) % lanes for key in keys})


def hold_env(
    hold: dict[int, int], gate: Path, barrier: CommitBarrier | None = None
) -> dict[str, str]:
    """The recording handler's settings to hold batches from `hold` (partition -> offset)."""
    env = {"RECORD_HOLD": ",".join(f"{p}:{o}" for p, o in hold.items()), "RECORD_GATE": str(gate)}
    if barrier is not None:
        env["RECORD_BARRIER_TOPIC"] = barrier.topic
    return env


def finish_with_a_new_worker(
    config: Path, tmp_path: Path, env: dict[str, str], kafka: str, group: str, topic: str,
    ends: dict[int, int],
) -> WorkerProcess:  # fmt: skip
    """Run a worker until the topic is committed to its end; stop it with SIGTERM (exit 0)."""
    worker = WorkerProcess(config, tmp_path, env)
    try:
        eventually(lambda: committed(kafka, group, topic) == ends, what="all committed")
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
    return worker


@on_clients("lanes", [1, 4], librdkafka=[1])
def test_kill_9_inside_batches_commits_none_of_them_and_a_restart_loses_nothing(
    kafka: str, kafka_client: str, tmp_path: Path, lanes: int
):
    topic, ends = keyed_topic(kafka, RECORDS, PARTITIONS, by_key_number=True)
    group = unique("g")
    barrier = CommitBarrier(kafka, group)
    asyncio.run(barrier.create())
    held_per_partition = {p: lanes_in_use(p, lanes) for p in ends}
    if lanes > 1:
        assert min(held_per_partition.values()) >= 2, "pick keys that use several lanes"
    hold = {p: end // 3 for p, end in ends.items()}
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"topics": [topic, barrier.topic], "fetch_max_records": FETCH},
        handler={**HELD, "parallelization_factor": lanes},
        runtime={"max_buffered_records": BUFFERED},
    )  # fmt: skip

    first = WorkerProcess(config, tmp_path, hold_env(hold, gate, barrier))
    try:
        eventually(
            lambda: Counter(p for p, _, _ in read_gate(gate)) == held_per_partition,
            what="every lane of every partition held inside a batch",
        )
        asyncio.run(barrier.wait())
        at_kill = committed(kafka, group, topic)
        held = read_gate(gate)
        first.kill9()
        first.wait()
    finally:
        first.stop()
    after_kill = committed(kafka, group, topic)
    run1 = read_handled(tmp_path, first.pid)
    assert read_gate(gate, "exited") == [], "a held batch was let go"
    for p in ends:
        first_held = min(f for q, f, _ in held if q == p)
        # Every batch before the held ones finished, so the commit reached them; none of
        # the held ones finished, so it may not pass the first of them.
        if lanes == 1:
            assert at_kill[p] == first_held, f"partition {p}: {at_kill[p]} vs batch {first_held}"
        else:  # the low watermark: the start of the tracker unit holding the first held record
            assert first_held - BATCH < at_kill[p] <= first_held, f"partition {p}"
        assert set(range(after_kill[p])) <= set(run1[p]), f"partition {p} committed unhandled"
    assert after_kill == at_kill

    second = finish_with_a_new_worker(config, tmp_path, {"RECORD_BARRIER_TOPIC": barrier.topic},
                                      kafka, group, topic, ends)  # fmt: skip
    run2 = read_handled(tmp_path, second.pid)
    for p, end in ends.items():
        resumed = run2[p] if lanes == 1 else sorted(run2[p])  # lanes interleave, keys don't
        assert resumed == list(range(after_kill[p], end)), f"partition {p} did not resume"
        assert set(run1[p]) | set(run2[p]) == set(range(end)), f"partition {p} lost records"
        twice = set(run1[p]) & set(run2[p])
        if lanes == 1:
            assert twice == set()  # the held batch never finished, all before it committed
        else:  # only what lanes finished ahead of the low watermark, within the buffer bound
            assert twice == {o for o in run1[p] if o >= after_kill[p]}
            assert len(twice) <= BUFFERED + FETCH


def test_kill_9_while_a_dead_letter_is_unacknowledged_commits_nothing_past_the_poison(
    kafka: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, RECORDS, PARTITIONS, by_key_number=True)
    group = unique("g")
    barrier = CommitBarrier(kafka, group)
    asyncio.run(barrier.create())
    dlq = tmp_path / "dlq.jsonl"
    dlq.mkdir()  # a directory where the DLQ file goes: every write fails until it is gone
    poison = {p: end // 2 for p, end in ends.items()}
    calls = tmp_path / "calls"
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"topics": [topic, barrier.topic]},
        errors={"maximum_retry_attempts": 1, "on_failure": f"file://{dlq}"},
    )  # fmt: skip
    env = {
        "RECORD_POISON": ",".join(f"{p}:{o}" for p, o in poison.items()),
        "RECORD_BARRIER_TOPIC": barrier.topic,
    }

    def poison_batches() -> dict[int, tuple[int, int]]:
        """partition -> (first, last) of the first invocation that held its poison record."""
        out: dict[int, tuple[int, int]] = {}
        for line in calls.read_text().splitlines() if calls.exists() else []:
            label, first, last = line.split(" ")
            p = int(label.rsplit("-", 1)[1])
            if p not in out and int(first) <= poison[p] <= int(last):
                out[p] = (int(first), int(last))
        return out

    def refused() -> set[int]:
        log = first_worker.log()
        return {p for p in ends if f"event=destination_failed partition={topic}-{p} " in log}

    def moved_past() -> set[int]:
        batches, handled = poison_batches(), read_handled(tmp_path, first_worker.pid)
        return {p for p, (_, last) in batches.items() if any(o > last for o in handled[p])}

    first_worker = WorkerProcess(config, tmp_path, {**env, "RECORD_STARTED": str(calls)})
    try:
        eventually(
            lambda: refused() == set(ends) or bool(moved_past()),
            what="every partition waiting for the destination to take its poison record",
        )
        assert not moved_past(), "records past an unacknowledged dead letter were handled"
        asyncio.run(barrier.wait())
        at_kill = committed(kafka, group, topic)
        first_worker.kill9()
        first_worker.wait()
    finally:
        first_worker.stop()
    batches = poison_batches()
    for p in ends:
        assert at_kill[p] == batches[p][0], f"partition {p} committed past its poison batch"
    assert committed(kafka, group, topic) == at_kill
    run1 = read_handled(tmp_path, first_worker.pid)

    dlq.rmdir()  # the destination is back
    second = finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)
    run2 = read_handled(tmp_path, second.pid)
    events = [orjson.loads(line) for line in dlq.read_text().splitlines()]
    dead = Counter(
        (int(e["partition"].rsplit("-", 1)[1]), r["offset"]) for e in events for r in e["records"]
    )
    assert dead == Counter(poison.items()), "each poison record dead-lettered exactly once"
    for p, end in ends.items():
        assert set(run1[p]) | set(run2[p]) | {poison[p]} == set(range(end)), f"partition {p}"
        first, last = batches[p]
        assert set(run1[p]) & set(run2[p]) <= set(range(first, last + 1)), f"partition {p}"


def test_sigterm_while_a_batch_is_inside_the_handler_waits_for_it_and_commits_it(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, 1000, partitions=1)
    group = unique("g")
    barrier = CommitBarrier(kafka, group)
    asyncio.run(barrier.create())
    gate = tmp_path / "gate"
    gate.mkdir()
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"topics": [topic, barrier.topic]}, handler=HELD,
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, hold_env({0: 500}, gate, barrier))
    try:
        eventually(lambda: read_gate(gate) != [], what="a batch held inside the handler")
        ((_, first, last),) = read_gate(gate)
        asyncio.run(barrier.wait())
        assert committed(kafka, group, topic) == {0: first}
        worker.terminate()
        worker.wait_for_log(r"event=shutdown_started")
        assert worker.proc.poll() is None, "the worker exited with a batch inside the handler"
        (gate / "release").touch()
        assert worker.wait() == 0
    finally:
        worker.stop()
    assert read_gate(gate, "exited") == [(0, first, last)]  # the handler finished the batch
    assert committed(kafka, group, topic) == {0: last + 1}  # it, and nothing after it:
    assert last + 1 < ends[0]
    assert read_handled(tmp_path, worker.pid) == {0: list(range(last + 1))}
    log = worker.log()
    assert "event=stop_requested signal=SIGTERM" in log
    assert "event=batch_abandoned" not in log
    assert log.index("event=shutdown_started") < log.index("event=shutdown_complete exit_code=0")


def test_a_partition_held_in_the_handler_stops_fetching_at_its_buffer_limit(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, ends = keyed_topic(kafka, 5000, partitions=1)
    group = unique("g")
    gate = tmp_path / "gate"
    gate.mkdir()
    limit, fetch = 300, 100
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        source={"fetch_max_records": fetch},
        runtime={"max_buffered_records": limit},
        handler=HELD,
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, hold_env({0: 0}, gate))
    labels = (("partition", f"{topic}-0"), ("source", "kafka"))
    try:
        port = worker.metrics_port
        eventually(lambda: read_gate(gate) != [], what="the first batch held")

        def sample(name: str) -> float:
            return scrape(port).get((name, labels), 0)

        eventually(
            lambda: (
                sample("worker_partition_paused") == 1
                or sample("worker_records_polled_total") > limit + fetch
            ),
            what="the partition paused at its limit",
        )
        polled = sample("worker_records_polled_total")
        assert polled <= limit + fetch, f"fetched {polled} records with one batch unfinished"
        assert sample("worker_partition_paused") == 1
        assert sample("worker_buffered_records") <= limit + fetch
        (gate / "release").touch()
        eventually(lambda: committed(kafka, group, topic) == ends, what="all committed")
        assert sample("worker_partition_paused") == 0
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
    assert read_handled(tmp_path, worker.pid) == {0: list(range(ends[0]))}
