"""batch.send at least once, on the real broker: outputs of failed invokes never appear,
nothing is committed before its outputs are acknowledged, and a kill -9 loses none.

Faults are injected at the boundary: a poison record (the handler raises), an output
topic that refuses every write (its `max.message.bytes` set to 1: the broker answers
MESSAGE_TOO_LARGE, its own behaviour, until the test sets it back), and SIGKILL of the
worker process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    CommitBarrier,
    WorkerProcess,
    committed,
    eventually,
    keyed_topic,
    read_gate,
    unique,
    write_config,
)
from tests.integration.output_helpers import (
    create_output_topic,
    expected_outputs,
    outputs_seen,
    set_topic_config,
)
from tests.integration.test_kafka_crash import finish_with_a_new_worker, hold_env

pytestmark = pytest.mark.kafka
PARTITIONS = 4
RECORDS = 4000
HANDLER = {"target": "output_handler:handle", "timeout_s": 300}


def _setup(kafka: str, tmp_path: Path, records: int = RECORDS, **sections: dict):
    topic, ends = keyed_topic(kafka, records, PARTITIONS, by_key_number=True)
    out, group = unique("out"), unique("g")
    barrier = CommitBarrier(kafka, group)

    async def topics() -> None:
        await barrier.create()
        await create_output_topic(kafka, out, 2)

    asyncio.run(topics())
    source = {"topics": [topic, barrier.topic], **sections.pop("source", {})}
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group, source=source,
        handler={**HANDLER, **sections.pop("handler", {})},
        outputs={"topics": [out], **sections.pop("outputs", {})}, **sections,
    )  # fmt: skip
    env = {"OUTPUT_TOPIC": out, "RECORD_BARRIER_TOPIC": barrier.topic}
    return topic, ends, out, group, barrier, config, env


def test_a_poison_records_outputs_never_appear_and_its_batch_mates_appear_once(
    kafka: str, tmp_path: Path
):
    topic, ends, out, group, _, config, env = _setup(
        kafka, tmp_path, 2000, errors={"maximum_retry_attempts": 1,
                                       "on_failure": f"file://{tmp_path / 'dlq.jsonl'}"},
    )  # fmt: skip
    poison = {(p, end // 2) for p, end in ends.items()}
    env["RECORD_POISON"] = ",".join(f"{p}:{o}" for p, o in poison)
    finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)
    seen = outputs_seen(kafka, out)
    assert set(seen) == expected_outputs(ends, skip=poison)  # the poison's never
    assert max(seen.values()) == 1  # its batch-mates' once: bisected away, sent again


def test_nothing_is_committed_before_its_outputs_are_acknowledged_and_kill_9_loses_none(
    kafka: str, tmp_path: Path
):
    topic, ends, out, group, _, config, env = _setup(kafka, tmp_path)
    asyncio.run(set_topic_config(kafka, out, max_message_bytes=1))  # every write refused
    first = WorkerProcess(config, tmp_path, env)
    try:
        first.wait_for_log(r"event=commit_failed", timeout_s=90)  # outputs not acknowledged
        # Only the starts (no record below them to send outputs of: `start_commit`).
        starts = dict.fromkeys(ends, 0)
        assert committed(kafka, group, topic) == starts, "offsets committed before their outputs"
        first.kill9()
        first.wait()
    finally:
        first.stop()
    assert committed(kafka, group, topic) == starts
    asyncio.run(set_topic_config(kafka, out, max_message_bytes=1048588))
    finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)
    seen = outputs_seen(kafka, out)
    assert set(seen) == expected_outputs(ends)


@pytest.mark.parametrize(
    "lanes",
    [1, pytest.param(4, marks=[pytest.mark.long, pytest.mark.skipif(
        not os.environ.get("STREAMWORKER_LONG"), reason="long: STREAMWORKER_LONG=1")])],
)  # fmt: skip
def test_kill_9_while_batches_are_inside_the_handler_then_a_restart_misses_no_output(
    kafka: str, tmp_path: Path, lanes: int
):
    topic, ends, out, group, barrier, config, env = _setup(
        kafka, tmp_path, handler={"parallelization_factor": lanes},
        runtime={"max_buffered_records": 1000}, batching={"batch_size": 20},
    )  # fmt: skip
    gate = tmp_path / "gate"
    gate.mkdir()
    hold = {p: end // 3 for p, end in ends.items()}
    first = WorkerProcess(config, tmp_path, {**env, **hold_env(hold, gate, barrier)})
    try:
        eventually(lambda: {p for p, _, _ in read_gate(gate)} == set(ends),
                   what="a batch of every partition held inside the handler")  # fmt: skip
        asyncio.run(barrier.wait())
        at_kill = {**dict.fromkeys(ends, 0), **committed(kafka, group, topic)}
        first.kill9()
        first.wait()
    finally:
        first.stop()
    before = outputs_seen(kafka, out)
    # Everything committed has its outputs out already, before any restart.
    assert expected_outputs(at_kill) <= set(before), "committed without its outputs"
    assert all(0 < at_kill[p] <= hold[p] for p in ends)
    finish_with_a_new_worker(config, tmp_path, env, kafka, group, topic, ends)
    seen = outputs_seen(kafka, out)
    assert set(seen) == expected_outputs(ends), "an output is missing"
    # Duplicates: only outputs the first worker sent for what it had not committed yet
    # (acknowledged in a round whose commit the kill cut off), which the restart redid.
    redone = [v for v in before if int(v.split(":")[1]) >= at_kill[int(v.split(":")[0])]]
    duplicates = sum(n - 1 for n in seen.values())
    print(f"lanes={lanes} outputs={sum(seen.values())} duplicates={duplicates}")
    assert duplicates == sum(before[v] for v in redone)
