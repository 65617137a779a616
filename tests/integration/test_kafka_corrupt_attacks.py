"""Adversary A5 on the corrupt-batch change (real broker; fault: a byte flipped in a stopped
broker's segment file, as in test_kafka_corrupt_batch; DeleteRecords; a second worker).

- The data fixed by deleting the records up to past the corrupt batch: the wait ends through
  the expiry path (`event=offsets_expired`, counted), the records after it are handled and
  committed.
- A second worker joining and leaving while the corrupt partition waits: whichever member
  holds it, nothing at or past the bad batch is handled or committed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from scripts import kafka_broker
from tests.integration.kafka_helpers import (
    LONG,
    WorkerProcess,
    committed,
    create_topic,
    end_offsets,
    eventually,
    handled_by,
    long_run,
    unique,
    wait_for_group_coordinator,
    write_config,
)
from tests.integration.test_kafka_corrupt_batch import (
    BATCH,
    CORRUPT,
    HEALTHY,
    commit_at_start,
    corrupt_second_batch,
    produce_batches,
)

pytestmark = pytest.mark.kafka


def all_at(bootstrap: str, group: str, topic: str, ends: dict, parts) -> bool:
    got = committed(bootstrap, group, topic)
    return all(got.get(p) == ends[p] for p in parts)


def corrupt_topic(broker: kafka_broker.Cluster, topic: str) -> int:
    asyncio.run(create_topic(broker.bootstrap, topic, 2))
    asyncio.run(produce_batches(broker.bootstrap, topic))
    (node,) = broker.nodes
    broker.stop_node(node.node_id, kafka_broker.signal.SIGTERM)
    bad = corrupt_second_batch(broker, topic)
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(broker.bootstrap))
    return bad


async def produce(bootstrap: str, topic: str, partition: int, count: int, tag: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for n in range(count):
            await producer.send(topic, b'{"%s":%d}' % (tag.encode(), n), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def delete_to(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(offset)})
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "kafka_client", [pytest.param("aiokafka", marks=LONG), "librdkafka"], indirect=True
)
def test_deleting_past_the_corrupt_batch_ends_the_wait_by_expiry(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    bootstrap, topic, group = broker.bootstrap, unique("crcdel"), unique("g")
    bad = corrupt_topic(broker, topic)
    asyncio.run(commit_at_start(bootstrap, group, topic))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group,
                          source={"starting_position": "latest"})  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log("event=assigned", timeout_s=60)
        eventually(lambda: committed(bootstrap, group, topic).get(CORRUPT) == bad,
                   timeout_s=20, what="good batch committed")  # fmt: skip
        worker.wait_for_log(r"event=fetch_stuck", timeout_s=20)
        asyncio.run(delete_to(bootstrap, topic, CORRUPT, bad + BATCH))  # past the bad batch
        asyncio.run(produce(bootstrap, topic, CORRUPT, 500, "after"))
        ends = asyncio.run(end_offsets(bootstrap, topic, 2))
        t0 = time.monotonic()
        eventually(lambda: committed(bootstrap, group, topic).get(CORRUPT) == ends[CORRUPT],
                   timeout_s=30, what="the partition read on past the deleted batch")  # fmt: skip
        took = time.monotonic() - t0
        worker.wait_for_log(
            rf"event=offsets_expired partition={topic}-{CORRUPT} position={bad} "
            rf"oldest={bad + BATCH} offsets={BATCH}", timeout_s=5)  # fmt: skip
        handled = handled_by(tmp_path, worker)[CORRUPT]
        assert set(range(bad + BATCH, ends[CORRUPT])) <= handled
        assert not handled & set(range(bad, bad + BATCH))
        print(f"[{kafka_client}] read on 500 records past the deletion in {took:.1f}s")
        if kafka_client == "aiokafka":  # back at full width (fetch_max_records 10000)
            asyncio.run(produce(bootstrap, topic, CORRUPT, 17000, "more"))  # 1+2+..+8192
            worker.wait_for_log(rf"event=fetch_recovered partition={topic}-{CORRUPT} ",
                                timeout_s=20)  # fmt: skip
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        worker.stop()


@long_run
def test_a_member_joining_and_leaving_while_the_partition_waits(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    bootstrap, topic, group = broker.bootstrap, unique("crcreb"), unique("g")
    bad = corrupt_topic(broker, topic)
    asyncio.run(commit_at_start(bootstrap, group, topic))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group,
                          source={"starting_position": "latest"})  # fmt: skip
    first = WorkerProcess(config, tmp_path)
    second = None
    try:
        first.wait_for_log("event=assigned", timeout_s=60)
        first.wait_for_log(r"event=fetch_stuck", timeout_s=30)
        second = WorkerProcess(config, tmp_path)
        second.wait_for_log("event=assigned", timeout_s=60)
        asyncio.run(produce(bootstrap, topic, CORRUPT, 10, "mid"))
        asyncio.run(produce(bootstrap, topic, HEALTHY, 50, "mid"))
        ends = asyncio.run(end_offsets(bootstrap, topic, 2))
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == ends[HEALTHY],
                   timeout_s=30, what="healthy read by two members")  # fmt: skip
        second.terminate()
        assert second.wait() == 0, second.log()[-3000:]
        asyncio.run(produce(bootstrap, topic, HEALTHY, 50, "late"))
        ends = asyncio.run(end_offsets(bootstrap, topic, 2))
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == ends[HEALTHY],
                   timeout_s=30, what="healthy read after the leave")  # fmt: skip
        time.sleep(3)  # window for the stuck partition's retries on its new owner
        handled = handled_by(tmp_path, first, second)
        assert handled.get(CORRUPT, set()) <= set(range(bad)), sorted(handled[CORRUPT])
        assert set(range(ends[HEALTHY])) <= handled[HEALTHY]
        assert committed(bootstrap, group, topic).get(CORRUPT) == bad
        first.terminate()
        assert first.wait() == 0, first.log()[-3000:]
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def three_batches(bootstrap: str, topic: str, partitions: list[int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p in partitions:
            for b in range(3):
                for i in range(BATCH):
                    await producer.send(topic, f'{{"b":{b},"i":{i}}}'.encode(), partition=p)
                await producer.flush()
    finally:
        await producer.stop()


def flip_batch(broker: kafka_broker.Cluster, topic: str, partition: int, base: int) -> None:
    from tests.integration.test_kafka_corrupt_batch import batches

    (node,) = broker.nodes
    (log,) = (node.workdir / "data" / f"{topic}-{partition}").glob("*.log")
    data = bytearray(log.read_bytes())
    (_, _, end), *_ = [b for b in batches(bytes(data)) if b[0] == base]
    data[end - 3] ^= 0x01
    log.write_bytes(bytes(data))


@long_run
def test_two_corrupt_partitions_1_and_10_of_a_topic_next_to_a_similar_named_one(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """Partitions 1 and 10 corrupt at once (`culprits` matches `repr(tp)` in the error text:
    partition=1 inside partition=10?), a second topic `<name>1` subscribed too (its
    partition 0's repr next to the first's)."""
    bootstrap, group = broker.bootstrap, unique("g")
    topic = unique("crcmany")
    other = topic + "1"
    asyncio.run(create_topic(bootstrap, topic, 11))
    asyncio.run(create_topic(bootstrap, other, 1))
    bad_parts = [1, 10]
    asyncio.run(three_batches(bootstrap, topic, bad_parts))
    (node,) = broker.nodes
    broker.stop_node(node.node_id, kafka_broker.signal.SIGTERM)
    for p in bad_parts:
        flip_batch(broker, topic, p, BATCH)
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(bootstrap))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group,
                          source={"topics": [topic, other],
                                  "starting_position": "trim_horizon"})  # fmt: skip
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log("event=assigned", timeout_s=60)
        for p in bad_parts:
            worker.wait_for_log(rf"event=fetch_stuck partition={topic}-{p} offset={BATCH} ",
                                timeout_s=30)  # fmt: skip
        healthy = [p for p in range(11) if p not in bad_parts]

        async def load() -> None:
            for p in healthy:
                await produce(bootstrap, topic, p, 30, "h")
            await produce(bootstrap, other, 0, 30, "o")
            for p in bad_parts:
                await produce(bootstrap, topic, p, 5, "after")

        t0 = time.monotonic()
        asyncio.run(load())
        ends = asyncio.run(end_offsets(bootstrap, topic, 11))
        eventually(lambda: all_at(bootstrap, group, topic, ends, healthy),
                   timeout_s=30, what="healthy committed")  # fmt: skip
        eventually(lambda: committed(bootstrap, group, other).get(0) == 30,
                   timeout_s=20, what="the other topic committed")  # fmt: skip
        print(f"[{kafka_client}] healthy 300 records committed in {time.monotonic() - t0:.1f}s")
        time.sleep(2)  # the stuck partitions' retries
        got = committed(bootstrap, group, topic)
        handled = handled_by(tmp_path, worker)
        for p in bad_parts:
            assert handled.get(p) == set(range(BATCH)), (p, sorted(handled.get(p, ())))
            assert got.get(p) == BATCH, (p, got)
        assert worker.log().count("event=fetch_stuck") == 2, worker.log()[-3000:]
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        worker.stop()


async def keyed_then_batches(bootstrap: str, topic: str, good: int) -> None:
    """`good` keyed records to CORRUPT (batches of 50), then two batches of BATCH (the
    first to be corrupted), and 200 to HEALTHY."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(good):
            await producer.send(topic, b'{"g":%d}' % n, key=b"%d" % (n % 7), partition=CORRUPT)
            if n % 50 == 49:
                await producer.flush()
        await producer.flush()
        for b in range(2):
            for i in range(BATCH):
                await producer.send(topic, b'{"b":%d}' % b, key=b"%d" % i, partition=CORRUPT)
            await producer.flush()
        for n in range(200):
            await producer.send(topic, b'{"h":%d}' % n, key=b"%d" % (n % 5), partition=HEALTHY)
        await producer.flush()
    finally:
        await producer.stop()


@long_run
def test_corrupt_batch_behind_a_buffer_paused_partition_with_key_lanes_then_kill9(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """A corrupt batch after 1000 records of its partition, read with four key lanes, a slow
    handler and a buffer of 40 records (the partition paused and resumed by the pipeline
    around the bad batch); then kill -9 and a restart; then SIGTERM while stuck."""
    bootstrap, topic, group = broker.bootstrap, unique("crcbuf"), unique("g")
    good = 1000
    asyncio.run(create_topic(bootstrap, topic, 2))
    asyncio.run(keyed_then_batches(bootstrap, topic, good))
    (node,) = broker.nodes
    broker.stop_node(node.node_id, kafka_broker.signal.SIGTERM)
    flip_batch(broker, topic, CORRUPT, good)
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(bootstrap))
    config = write_config(
        tmp_path / "w.toml", bootstrap, topic, group,
        source={"starting_position": "trim_horizon"},
        batching={"batch_size": 10, "maximum_batching_window_ms": 20},
        handler={"target": "recording_handler:handle", "timeout_s": 30,
                 "parallelization_factor": 4},
        runtime={"log_format": "text", "max_buffered_records": 40},
    )  # fmt: skip
    env = {"RECORD_SLEEP_S": "0.01"}
    first = WorkerProcess(config, tmp_path, env)
    second = None
    try:
        eventually(lambda: committed(bootstrap, group, topic).get(CORRUPT) == good,
                   timeout_s=40, what="everything before the bad batch committed")  # fmt: skip
        first.wait_for_log(rf"event=fetch_stuck partition={topic}-{CORRUPT} offset={good} ",
                           timeout_s=20)  # fmt: skip
        handled = handled_by(tmp_path, first)
        assert handled[CORRUPT] == set(range(good)), sorted(
            set(handled[CORRUPT]) - set(range(good))
        )
        assert handled[HEALTHY] == set(range(200))
        first.kill9()
        first.wait()
        second = WorkerProcess(config, tmp_path, env)
        second.wait_for_log(rf"event=fetch_stuck partition={topic}-{CORRUPT} offset={good} ",
                            timeout_s=40)  # fmt: skip
        asyncio.run(produce(bootstrap, topic, HEALTHY, 20, "late"))
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == 220,
                   timeout_s=20, what="healthy after the restart")  # fmt: skip
        again = handled_by(tmp_path, second)
        assert again.get(CORRUPT, set()) <= set(range(good))
        assert committed(bootstrap, group, topic).get(CORRUPT) == good
        t0 = time.monotonic()
        second.terminate()
        assert second.wait() == 0, second.log()[-3000:]
        print(f"[{kafka_client}] SIGTERM while stuck: exit 0 in {time.monotonic() - t0:.1f}s")
        assert committed(bootstrap, group, topic).get(CORRUPT) == good
    finally:
        first.stop()
        if second is not None:
            second.stop()


def cpu_s(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll_errors(worker: WorkerProcess) -> float:
    lines = [line for line in worker.metrics_text().splitlines()
             if line.startswith("worker_poll_errors_total{")]  # fmt: skip
    return sum(float(line.split()[-1]) for line in lines)


@long_run
def test_stuck_costs_no_cpu_and_counts_about_one_error_a_second(
    broker: kafka_broker.Cluster, kafka_client: str, tmp_path: Path
):
    """While stuck (the corrupt partition alone, and next to an idle healthy one): CPU of
    the worker process and poll errors counted over a 10 s window. librdkafka counted
    none before (its stuck partition only logged)."""
    bootstrap, topic, group = broker.bootstrap, unique("crccpu"), unique("g")
    bad = corrupt_topic(broker, topic)
    asyncio.run(commit_at_start(bootstrap, group, topic))
    config = write_config(tmp_path / "w.toml", bootstrap, topic, group)
    worker = WorkerProcess(config, tmp_path)
    try:
        worker.wait_for_log(rf"event=fetch_stuck partition={topic}-{CORRUPT} offset={bad} ",
                            timeout_s=40)  # fmt: skip
        eventually(lambda: committed(bootstrap, group, topic).get(HEALTHY) == 20,
                   timeout_s=20, what="healthy committed")  # fmt: skip
        c0, e0, t0 = cpu_s(worker.pid), poll_errors(worker), time.monotonic()
        time.sleep(10)  # the measurement window
        c1, e1, t1 = cpu_s(worker.pid), poll_errors(worker), time.monotonic()
        cpu, rate = (c1 - c0) / (t1 - t0), (e1 - e0) / (t1 - t0)
        print(f"[{kafka_client}] stuck: cpu {cpu:.3f} s/s, poll errors {rate:.2f}/s "
              f"(total {e1:.0f})")  # fmt: skip
        assert cpu < 0.2, cpu
        assert 0.2 < rate <= 3, rate  # counted on both clients: an alert on it sees this
        assert committed(bootstrap, group, topic).get(CORRUPT) == bad
        worker.terminate()
        assert worker.wait() == 0
    finally:
        worker.stop()


@pytest.fixture
def broker4(tmp_path: Path):
    cluster = kafka_broker.start_cluster(tmp_path / "kafka4", nodes=1,
                                         version=kafka_broker.KAFKA4_VERSION)  # fmt: skip
    try:
        asyncio.run(wait_for_group_coordinator(cluster.bootstrap))
        yield cluster
    finally:
        cluster.stop()


@long_run
def test_kip848_member_joins_and_leaves_while_the_partition_waits(
    broker4: kafka_broker.Cluster, tmp_path: Path
):
    """librdkafka, `group_protocol = "consumer"` on a Kafka 4 broker (incremental assign:
    the stuck partition's pause and seek survive the others moving, or it moves)."""
    bootstrap, topic, group = broker4.bootstrap, unique("crc848"), unique("g")
    asyncio.run(create_topic(bootstrap, topic, 4))
    bad = corrupt_topic_on(broker4, topic)
    config = write_config(
        tmp_path / "w.toml", bootstrap, topic, group,
        source={"client": "librdkafka", "group_protocol": "consumer",
                "starting_position": "trim_horizon",
                "session_timeout_ms": None, "heartbeat_interval_ms": None},
    )  # fmt: skip
    first = WorkerProcess(config, tmp_path)
    second = None
    try:
        first.wait_for_log(rf"event=fetch_stuck partition={topic}-{CORRUPT} offset={bad} ",
                           timeout_s=60)  # fmt: skip
        second = WorkerProcess(config, tmp_path)
        second.wait_for_log("event=assigned", timeout_s=60)
        asyncio.run(produce(bootstrap, topic, CORRUPT, 10, "mid"))
        for p in (0, 2, 3):
            asyncio.run(produce(bootstrap, topic, p, 30, "mid"))
        ends = asyncio.run(end_offsets(bootstrap, topic, 4))
        healthy = (0, 2, 3)
        eventually(lambda: all_at(bootstrap, group, topic, ends, healthy),
                   timeout_s=40, what="healthy, two members")  # fmt: skip
        second.terminate()
        assert second.wait() == 0, second.log()[-3000:]
        for p in healthy:
            asyncio.run(produce(bootstrap, topic, p, 30, "late"))
        ends = asyncio.run(end_offsets(bootstrap, topic, 4))
        eventually(lambda: all_at(bootstrap, group, topic, ends, healthy),
                   timeout_s=40, what="healthy, one member")  # fmt: skip
        time.sleep(3)  # the stuck partition's retries on whoever holds it
        handled = handled_by(tmp_path, first, second)
        assert handled.get(CORRUPT, set()) <= set(range(bad)), sorted(handled[CORRUPT])
        assert committed(bootstrap, group, topic).get(CORRUPT) == bad
        stuck = [
            w for w in (first, second) if f"partition={topic}-{CORRUPT} offset={bad}" in w.log()
        ]
        print(f"stuck seen by {len(stuck)} member(s)")
        first.terminate()
        assert first.wait() == 0, first.log()[-3000:]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def corrupt_topic_on(broker: kafka_broker.Cluster, topic: str) -> int:
    asyncio.run(produce_batches(broker.bootstrap, topic))
    (node,) = broker.nodes
    broker.stop_node(node.node_id, kafka_broker.signal.SIGTERM)
    bad = corrupt_second_batch(broker, topic)
    broker.start_node(node.node_id)
    asyncio.run(wait_for_group_coordinator(broker.bootstrap))
    return bad
