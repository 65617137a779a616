"""A new partition's start commit (`start_commit`) that does not land, on the real broker,
on both clients: the worker is cut off from the broker from inside that commit (a proxy
holds its requests, `commit_hold`) until the group expires it, then reconnects and
takes its partitions again, still with no checkpoint of the group's.

With `latest`, the start the worker chose first must hold: every record written after
it is handled. Before the fix the start was forgotten with the partitions, the worker
took them again at the end, committed that, and every record written between was
skipped for good (measured: 10 of 10 a partition, both clients).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.adversary.commit_hold import HeldBroker, held_broker
from tests.integration.kafka_helpers import (
    WorkerProcess,
    committed,
    create_topic,
    eventually,
    read_handled,
    unique,
    wait_for_group_coordinator,
    write_config,
)
from tests.integration.output_helpers import create_output_topic
from tests.integration.test_kafka_exactly_once import aborted
from tests.integration.test_kafka_fresh_group_start import PARTITIONS, produce_to

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeldBroker]:
    with held_broker(tmp_path_factory.mktemp("held")) as broker:
        asyncio.run(wait_for_group_coordinator(broker.bootstrap))
        yield broker


async def _members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        return len(response.groups[0][5])
    finally:
        await admin.close()


def test_latest_a_start_not_committed_holds_when_the_worker_takes_its_partitions_again(
    held: HeldBroker, kafka_client: str, tmp_path: Path
):
    topic, group = unique("cut"), unique("g")
    asyncio.run(create_topic(held.bootstrap, topic, PARTITIONS))
    asyncio.run(produce_to(held.bootstrap, topic, 5))  # before the start: not to be read
    source = {"starting_position": "latest", "client_id": "cut-off"}
    config = write_config(tmp_path / "w.toml", held.bootstrap, topic, group, source=source)
    held.hold.arm()
    worker = WorkerProcess(config, tmp_path)
    try:
        assert held.hold.wait_held(60) == "cut-off"  # inside its start commit, cut off
        asyncio.run(produce_to(held.bootstrap, topic, 10))  # after the start: to be read
        eventually(lambda: asyncio.run(_members(held.bootstrap, group)) == 0, timeout_s=30,
                   what="the group expired the cut-off member")  # fmt: skip
        assert committed(held.bootstrap, group, topic) == {}
        held.hold.release()
        worker.wait_for_log(r"event=assigned", count=2, timeout_s=30)  # taken again
        asyncio.run(produce_to(held.bootstrap, topic, 10))
        done = dict.fromkeys(range(PARTITIONS), 25)
        at = lambda: committed(held.bootstrap, group, topic)  # noqa: E731
        eventually(lambda: at() == done, timeout_s=30, what="committed to the end")
        handled = read_handled(tmp_path, worker.pid)
        for p in range(PARTITIONS):
            assert set(handled.get(p, [])) == set(range(5, 25)), (p, sorted(handled.get(p, [])))
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        held.hold.release()
        worker.stop()


def test_latest_a_start_cut_off_by_a_sigterm_is_committed_by_the_final_commit(
    held: HeldBroker, kafka_client: str, tmp_path: Path
):
    """SIGTERM while the start commit is held; the held requests are then lost with their
    connection (a reset) and the client reconnects. The worker handled nothing: before
    the fix its final commit committed nothing, it left with no checkpoint, and the next
    worker (latest) started at the end: every record written since was skipped (10 of 10
    a partition). Now the final commit commits the start."""
    topic, group = unique("stop"), unique("g")
    asyncio.run(create_topic(held.bootstrap, topic, PARTITIONS))
    asyncio.run(produce_to(held.bootstrap, topic, 5))  # before the start: not to be read
    source = {"starting_position": "latest", "client_id": "cut-at-stop"}
    config = write_config(tmp_path / "w.toml", held.bootstrap, topic, group, source=source)
    held.hold.arm()
    worker = WorkerProcess(config, tmp_path)
    try:
        assert held.hold.wait_held(60) == "cut-at-stop"  # inside its start commit
        worker.terminate()
        asyncio.run(produce_to(held.bootstrap, topic, 10))  # after the start: owed
        # Its bound passed (the shutdown's final commit is under way, or done): the outage
        # ends, what was held is lost with its connection.
        worker.wait_for_log(r"event=start_not_committed", timeout_s=30)
        held.hold.drop()
        assert worker.wait() == 0, worker.log()[-3000:]
        log = worker.log()
        left = committed(held.bootstrap, group, topic)
    finally:
        held.hold.release()
        worker.stop()
    source = {"starting_position": "latest", "client_id": "next"}
    config = write_config(tmp_path / "n.toml", held.bootstrap, topic, group, source=source)
    nxt = WorkerProcess(config, tmp_path)
    try:
        done = dict.fromkeys(range(PARTITIONS), 15)
        at = lambda: committed(held.bootstrap, group, topic)  # noqa: E731
        eventually(lambda: at() == done, timeout_s=30, what="committed to the end")
        handled = read_handled(tmp_path, nxt.pid)
        lost = {p: 10 - len(set(handled.get(p, [])) & set(range(5, 15))) for p in done}
        assert lost == dict.fromkeys(done, 0) and left == dict.fromkeys(done, 5), (lost, left)
        assert "never retrieved" not in log and "Traceback" not in log, log[-3000:]
    finally:
        nxt.stop()


def test_exactly_once_a_cut_off_start_commit_never_lands_behind_a_transaction(
    held: HeldBroker, tmp_path: Path
):
    """Exactly once: the start commit goes to the group on the consumer's connection, the
    checkpoints of handled records in transactions on each partition's producer. The
    consumer's connection stalls inside the start commit (only that one: `by_connection`);
    its bound gives up, the records flow, and a transaction commits them. Before the fix
    that transaction did not wait for the start's request, which reached the broker after
    it and moved the checkpoint back to the start: every record of the transaction was
    handled again, and its outputs sent twice (measured: 10 of 10 a partition)."""
    topic, group, out = unique("eos"), unique("g"), unique("out")
    asyncio.run(create_topic(held.bootstrap, topic, PARTITIONS))
    asyncio.run(create_output_topic(held.bootstrap, out, 2))
    asyncio.run(produce_to(held.bootstrap, topic, 5))  # before the start: not to be read
    source = {"starting_position": "latest", "client_id": "eos-held",
              "session_timeout_ms": 30000, "commit_interval_ms": 200}  # fmt: skip
    config = write_config(
        tmp_path / "w.toml", held.bootstrap, topic, group, source=source,
        handler={"target": "output_handler:handle"},
        outputs={"topics": [out], "exactly_once": True},
    )  # fmt: skip
    held.hold.arm(by_connection=True)
    worker = WorkerProcess(config, tmp_path, {"OUTPUT_TOPIC": out})
    done = dict.fromkeys(range(PARTITIONS), 15)
    at = lambda: committed(held.bootstrap, group, topic)  # noqa: E731
    try:
        assert held.hold.wait_held(60) == "eos-held"  # inside its start commit
        worker.wait_for_log(r"event=start_not_committed", timeout_s=30)  # its bound passed
        asyncio.run(produce_to(held.bootstrap, topic, 10))  # after the start: to be read
        waits = lambda: "event=commit_waits_for_cancelled" in worker.log()  # noqa: E731
        eventually(lambda: at() == done or waits(), timeout_s=30,
                   what="a transaction committed, or waiting for the start")  # fmt: skip
        held.hold.release()
        worker.wait_for_log(r"event=commit_settled_after_cancel", timeout_s=30)
        try:  # nothing is left in flight: the checkpoint the group keeps is this one
            eventually(lambda: at() == done, timeout_s=20, what="committed to the end")
        except AssertionError:
            left = at()
            back = {p: done[p] - left.get(p, 0) for p in done}
            raise AssertionError(f"the checkpoint moved back: handled again {back}") from None
        handled = read_handled(tmp_path, worker.pid)
        for p in range(PARTITIONS):
            assert sorted(handled.get(p, [])) == list(range(5, 15)), (p, handled.get(p))
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        held.hold.release()
        worker.stop()


def test_exactly_once_a_cut_off_start_is_committed_while_transactions_abort(
    held: HeldBroker, tmp_path: Path
):
    """Exactly once: the start commit is cut off (its connection stalls, then is reset),
    and every transaction of partition 0 aborts before its commit (an output larger than
    the topic takes). Nothing of those landed, so the start is still owed and a commit
    round sends it. Before the fix the first aborted transaction counted as a commit past
    it: no checkpoint of partition 0 until the SIGTERM, and the next worker (latest)
    started at the end, past every record written since (measured: 10 of 10 lost)."""
    topic, group, out = unique("eosab"), unique("g"), unique("out")
    asyncio.run(create_topic(held.bootstrap, topic, PARTITIONS))
    asyncio.run(create_output_topic(held.bootstrap, out, 2, max_message_bytes=600_000))
    asyncio.run(produce_to(held.bootstrap, topic, 5))  # before the start: not to be read
    source = {"starting_position": "latest", "client_id": "eos-aborts",
              "session_timeout_ms": 30000, "commit_interval_ms": 200}  # fmt: skip
    config = write_config(
        tmp_path / "w.toml", held.bootstrap, topic, group, source=source,
        handler={"target": "output_handler:handle"},
        outputs={"topics": [out], "exactly_once": True},
    )  # fmt: skip
    held.hold.arm(by_connection=True)
    env = {"OUTPUT_TOPIC": out}
    worker = WorkerProcess(config, tmp_path, {**env, "OUTPUT_HUGE": "0:5"})
    try:
        assert held.hold.wait_held(60) == "eos-aborts"  # inside its start commit
        worker.wait_for_log(r"event=start_not_committed", timeout_s=30)  # its bound passed
        held.hold.drop()  # the held start is lost with its connection
        asyncio.run(produce_to(held.bootstrap, topic, 10))  # after the start: to be read
        eventually(lambda: aborted(worker) >= 3, timeout_s=30, what="aborted rounds")
        worker.terminate()
        assert worker.wait() == 0, worker.log()[-3000:]
    finally:
        held.hold.release()
        worker.stop()
    config = write_config(
        tmp_path / "n.toml", held.bootstrap, topic, group, source={**source, "client_id": "n"},
        handler={"target": "output_handler:handle"},
        outputs={"topics": [out], "exactly_once": True},
    )  # fmt: skip
    nxt = WorkerProcess(config, tmp_path, env)
    try:
        done = dict.fromkeys(range(PARTITIONS), 15)
        eventually(lambda: committed(held.bootstrap, group, topic) == done, timeout_s=30,
                   what="committed to the end")  # fmt: skip
        handled = read_handled(tmp_path, nxt.pid)
        lost = 10 - len(set(handled.get(0, [])) & set(range(5, 15)))
        assert lost == 0, f"partition 0: {lost} of 10 records written after the start skipped"
    finally:
        nxt.stop()
