"""A topic written by a transactional producer is committed through to its end (lag 0), on
both Kafka clients, on the real broker; a plain topic's commits are what they were.

Each transaction ends in a commit (or abort) marker, a control record that consumers
never receive. Before the worker committed the client's fetch position past markers, the
group's offset stayed at the last data record + 1, one short of the end for ever: the
consumer-group lag was 1 (KEDA never scaled to zero) and `worker lag --wait` never
returned. Failed before the change, on both clients (committed 14 of 15 on each partition).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.kafka_helpers import (
    ROOT,
    WorkerProcess,
    committed,
    create_topic,
    end_offsets,
    eventually,
    keyed_topic,
    read_handled,
    unique,
    write_config,
)
from tests.integration.output_helpers import create_output_topic, outputs_seen

pytestmark = pytest.mark.kafka

PARTITIONS = 2


async def write_transactions(
    bootstrap: str, topic: str, plan: list[str], create: bool = True
) -> set[tuple[int, int]]:
    """One transaction per entry of `plan` ("commit" or "abort"), four records to each
    partition: the (partition, offset) of the records a read_committed reader gets."""
    if create:
        await create_topic(bootstrap, topic, PARTITIONS)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await txn.start()
    readable: set[tuple[int, int]] = set()
    try:
        for n, kind in enumerate(plan):
            await txn.begin_transaction()
            sent = [
                await txn.send(topic, f"{kind}-{n}-{i}".encode(), partition=i % PARTITIONS)
                for i in range(4 * PARTITIONS)
            ]
            metas = await asyncio.gather(*sent)
            if kind == "abort":
                await txn.abort_transaction()
                continue
            await txn.commit_transaction()
            readable |= {(m.partition, m.offset) for m in metas}
    finally:
        await txn.stop()
    return readable


def handled_pairs(record_dir: Path) -> Counter[tuple[int, int]]:
    return Counter((p, o) for p, offsets in read_handled(record_dir).items() for o in offsets)


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    ends = asyncio.run(end_offsets(bootstrap, topic, PARTITIONS))
    return committed(bootstrap, group, topic) == ends


def lag_wait(config: Path, seconds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "lag", "--config", str(config), "--wait", str(seconds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )


def test_a_transactional_topic_is_committed_to_its_end_and_every_record_handled_once(
    kafka: str, kafka_client: str, tmp_path: Path
):
    topic, group = unique("txn-end"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit", "abort", "commit"]))
    config = write_config(tmp_path / "w.toml", kafka, topic, group)
    worker = WorkerProcess(config, tmp_path)
    try:
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="all handled")
        # The markers after the last records are passed too: lag 0 on every partition.
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        done = lag_wait(config, 20)
        assert done.returncode == 0, done.stdout + done.stderr
        # Transactions written while the worker is idle, the last one aborted (its
        # records and its marker are the end): passed too.
        later = ["commit", "abort"]
        readable |= asyncio.run(write_transactions(kafka, topic, later, create=False))
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="later handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0 again")
        worker.terminate()
        assert worker.wait() == 0
        handled = handled_pairs(tmp_path)
        assert set(handled) == readable, "an aborted record was handled, or one was missed"
        assert max(handled.values()) == 1, "a record was handled twice"
    finally:
        worker.stop()


def test_a_plain_topic_is_committed_exactly_past_its_last_record(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """No markers, nothing to pass: the committed offset is the last record + 1, the end."""
    topic, group = unique("plain-end"), unique("g")

    async def write() -> dict[int, int]:
        await create_topic(kafka, topic, PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
        await producer.start()
        try:
            for i in range(30):
                await producer.send_and_wait(topic, b"plain", partition=i % PARTITIONS)
        finally:
            await producer.stop()
        return await end_offsets(kafka, topic, PARTITIONS)

    ends = asyncio.run(write())
    worker = WorkerProcess(write_config(tmp_path / "w.toml", kafka, topic, group), tmp_path)
    try:
        eventually(lambda: committed(kafka, group, topic) == ends, what="committed to the end")
        handled = handled_pairs(tmp_path)
        assert {p: max(o for q, o in handled if q == p) + 1 for p, _ in handled} == ends
        assert max(handled.values()) == 1
        worker.terminate()
        assert worker.wait() == 0
        assert committed(kafka, group, topic) == ends, "the final commit moved it"
    finally:
        worker.stop()


def test_partitions_paused_by_their_buffer_limits_are_passed_only_once_all_is_handled(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Many small transactions through buffers of 12 records (batches of 5, a slow
    handler): a fetch returns far more than 12 records a partition, so partitions pause
    and resume all along, their fetch positions ahead of what is handled; still every
    record is handled once and the end is committed."""
    topic, group = unique("txn-paused"), unique("g")
    plan = ["abort" if n % 5 == 4 else "commit" for n in range(25)]
    readable = asyncio.run(write_transactions(kafka, topic, plan))
    config = write_config(
        tmp_path / "w.toml", kafka, topic, group,
        batching={"batch_size": 5, "maximum_batching_window_ms": 20},
        runtime={"log_format": "text", "max_buffered_records": 12},
    )  # fmt: skip
    worker = WorkerProcess(config, tmp_path, extra_env={"RECORD_SLEEP_S": "0.02"})
    try:
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="all handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        worker.terminate()
        assert worker.wait() == 0
        handled = handled_pairs(tmp_path)
        assert set(handled) == readable and max(handled.values()) == 1
    finally:
        worker.stop()


def test_a_rebalance_while_transactions_arrive_commits_nothing_unhandled(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """A second worker joins while transactions arrive and the first leaves: partitions
    move twice, revoked whatever they are doing then (settled and passed, or with records
    buffered or in the handler; not aimed). Every readable record is handled by one of
    them (nothing committed past an unhandled one), and the end is committed."""
    topic, group = unique("txn-moved"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit"] * 5))
    config = write_config(tmp_path / "w.toml", kafka, topic, group)
    first = WorkerProcess(config, tmp_path, extra_env={"RECORD_SLEEP_S": "0.01"})
    second = None
    try:
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=60, what="lag 0")
        second = WorkerProcess(config, tmp_path, extra_env={"RECORD_SLEEP_S": "0.01"})
        for n in range(6):  # while the group rebalances
            plan = ["abort"] if n == 3 else ["commit"]
            readable |= asyncio.run(write_transactions(kafka, topic, plan, create=False))
        second.wait_for_log(r"event=assigned")
        first.terminate()
        assert first.wait() == 0
        readable |= asyncio.run(write_transactions(kafka, topic, ["commit"], create=False))
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="all handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=60, what="lag 0 at last")
        handled = handled_pairs(tmp_path)
        assert set(handled) == readable, "an aborted record was handled"
        second.terminate()
        assert second.wait() == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_group_left_one_short_by_an_earlier_worker_is_passed_at_the_start(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """A worker of an earlier version left the group at the last record + 1, at the
    marker: the new one passes it with nothing to handle (no record is returned after
    the start at all), and handles nothing again."""
    topic, group = unique("txn-short"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit", "abort"]))
    short = {p: max(o for q, o in readable if q == p) + 1 for p in range(PARTITIONS)}

    async def leave_one_short() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group)
        await consumer.start()
        try:
            offsets = {TopicPartition(topic, p): o for p, o in short.items()}
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()

    asyncio.run(leave_one_short())
    assert committed(kafka, group, topic) == short
    worker = WorkerProcess(write_config(tmp_path / "w.toml", kafka, topic, group), tmp_path)
    try:
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        worker.terminate()
        assert worker.wait() == 0
        assert handled_pairs(tmp_path) == Counter(), "records before the checkpoint handled"
    finally:
        worker.stop()


def test_a_next_stage_reading_exactly_once_outputs_reaches_lag_0_exactly_once_itself(
    kafka: str, tmp_path: Path
):
    """The case that showed it: stage 1 writes its outputs exactly once (a transaction per
    partition and commit round, each ending in a marker); stage 2 reads them, itself
    exactly once (aiokafka: its passes past the markers are committed in transactions of
    offsets alone). Stage 2's group reaches the end of stage 1's topic, and every output
    of stage 1 is handled by stage 2 once."""
    topic, _ = keyed_topic(kafka, 300, PARTITIONS, by_key_number=True)
    middle, last = unique("stage1-out"), unique("stage2-out")
    asyncio.run(create_output_topic(kafka, middle, PARTITIONS))
    asyncio.run(create_output_topic(kafka, last, PARTITIONS))
    stages, group2 = [], unique("g2")
    for n, (src, out, group) in enumerate(
        [(topic, middle, unique("g1")), (middle, last, group2)], start=1
    ):
        (tmp_path / f"s{n}").mkdir()
        config = write_config(
            tmp_path / f"s{n}.toml", kafka, src, group,
            handler={"target": "output_handler:handle"},
            outputs={"topics": [out], "exactly_once": True},
        )  # fmt: skip
        stages.append(WorkerProcess(config, tmp_path / f"s{n}", {"OUTPUT_TOPIC": out}))
    try:
        eventually(lambda: sum(len(v) for v in read_handled(tmp_path / "s1").values()) == 300,
                   what="stage 1 handled all")  # fmt: skip
        eventually(lambda: caught_up(kafka, group2, middle), timeout_s=60, what="stage 2 lag 0")
        handled = handled_pairs(tmp_path / "s2")
        middle_ends = asyncio.run(end_offsets(kafka, middle, PARTITIONS))
        seen = outputs_seen(kafka, middle, PARTITIONS, isolation_level="read_committed")
        assert sum(handled.values()) == sum(seen.values()) == 300, (handled, middle_ends)
        assert max(handled.values()) == 1
        assert sum(middle_ends.values()) > 300, "stage 1 wrote no markers: proved nothing"
        for worker in stages:
            worker.terminate()
            assert worker.wait() == 0
    finally:
        for worker in stages:
            worker.stop()


def test_an_open_transaction_holds_its_partition_at_the_last_stable_offset_until_it_ends(
    kafka: str, kafka_client: str, tmp_path: Path
):
    """Partition 0 has a transaction left open (its records are past the last stable
    offset: not readable, not passed); partition 1's transactions go on. Once the settle
    round passed partition 1's markers (lag 0 there), partition 0 is still committed at
    its last stable offset, nothing of the open transaction handled; once it commits, it
    is handled once and the end is committed."""
    topic, group = unique("txn-open"), unique("g")
    readable = asyncio.run(write_transactions(kafka, topic, ["commit"]))
    worker = WorkerProcess(write_config(tmp_path / "w.toml", kafka, topic, group), tmp_path)

    async def open_then(check) -> set[tuple[int, int]]:
        txn = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=unique("open"))
        await txn.start()
        try:
            await txn.begin_transaction()
            sent = [await txn.send(topic, b"open", partition=0) for _ in range(3)]
            held = {(m.partition, m.offset) for m in await asyncio.gather(*sent)}
            stable = (await end_offsets(kafka, topic, PARTITIONS))[0] - 3  # before them
            more = await write_transactions(kafka, topic, ["commit"] * 2, create=False)
            await asyncio.to_thread(check, stable, more - held)
            await txn.commit_transaction()
            return held | more
        finally:
            await txn.stop()

    def while_open(stable: int, more: set[tuple[int, int]]) -> None:
        # write_transactions writes both partitions; partition 0's records of it wait
        # behind the open transaction, partition 1's are readable.
        ones = {po for po in more if po[0] == 1}
        eventually(lambda: ones <= set(handled_pairs(tmp_path)), what="partition 1 handled")
        ends = asyncio.run(end_offsets(kafka, topic, PARTITIONS))
        eventually(lambda: committed(kafka, group, topic).get(1) == ends[1],
                   timeout_s=30, what="partition 1 passed its markers")  # fmt: skip
        assert committed(kafka, group, topic)[0] == stable, "passed the last stable offset"
        assert not {po for po in handled_pairs(tmp_path) if po[0] == 0} - readable

    try:
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0")
        readable |= asyncio.run(open_then(while_open))
        eventually(lambda: readable <= set(handled_pairs(tmp_path)), what="all handled")
        eventually(lambda: caught_up(kafka, group, topic), timeout_s=30, what="lag 0 at last")
        handled = handled_pairs(tmp_path)
        assert set(handled) == readable and max(handled.values()) == 1
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()
