"""The librdkafka source's own rules, without a broker: what it commits, what it turns
messages into, and the settings it gives librdkafka.

The consumer is a stand-in that records calls (the real client is tested on the real
broker in tests/integration, on both clients); here the question is only which offsets
the source hands it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as RdTopicPartition

from worker.config import WorkerConfig
from worker.sources import make_source
from worker.sources.base import OwnershipLost
from worker.sources.kafka.config import KafkaSourceConfig
from worker.sources.kafka.librdkafka_conf import FETCH_QUEUE_BACKOFF_MS, consumer_conf
from worker.sources.kafka.librdkafka_records import by_partition
from worker.sources.kafka.librdkafka_source import LibrdkafkaSource

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class RecordingConsumer:
    """Commits are recorded; the fetch position is far ahead of anything handled."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, offsets: list[RdTopicPartition], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        return offsets

    def get_watermark_offsets(self, partition: RdTopicPartition, cached: bool) -> tuple[int, int]:
        return (-1001, -1001)  # nothing fetched yet

    def position(self, partitions: list[RdTopicPartition]) -> list[RdTopicPartition]:
        return [RdTopicPartition(tp.topic, tp.partition, 10_000) for tp in partitions]


def config(**source: Any) -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate({"topics": ["t"], "client": "librdkafka", **source})


async def started_source() -> tuple[LibrdkafkaSource, RecordingConsumer]:
    source = LibrdkafkaSource(config())
    consumer = RecordingConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    source._loop = asyncio.get_running_loop()

    class Listener:
        async def on_assigned(self, partitions: Any) -> None: ...

        async def on_lost(self, partitions: Any) -> None: ...

    source._listener = Listener()  # type: ignore[assignment]
    await source.assigned([TP0, TP1], [0, 0])
    return source, consumer


async def test_a_commit_sends_the_handled_positions_plus_one_never_the_fetch_position():
    source, consumer = await started_source()
    await source.commit({TP0: 41, TP1: 7})
    assert consumer.commits == [[("t", 0, 42), ("t", 1, 8)]]
    assert source.lag(TP0) is None  # no fetch yet: no watermark, no made-up lag


async def test_a_lost_partition_is_never_committed_and_the_rest_still_are():
    source, consumer = await started_source()
    refused_inside: list[frozenset] = []

    class Listener:
        async def on_lost(self, partitions: Any) -> None:
            """A commit the listener still tries while abandoning them is refused."""
            try:
                await source.commit({TP1: 5})
            except OwnershipLost as exc:
                refused_inside.append(exc.lost)

    source._listener = Listener()  # type: ignore[assignment]
    await source.lost([TP1])
    assert refused_inside == [{TP1}]
    with pytest.raises(OwnershipLost) as refused:
        await source.commit({TP0: 3, TP1: 5})
    assert refused.value.lost == {TP1}
    assert consumer.commits == [[("t", 0, 4)]]


def test_messages_become_records_by_partition_in_order_with_errors_apart():
    messages = [
        Message(topic="t", partition=0, offset=5, key=b"k", value=b'{"a": 1}',
                headers=[("h", b"1")], timestamp=(1, 123)),
        Message(topic="t", partition=1, offset=9, key=None, value=None, timestamp=(2, 456)),
        Message(topic="t", partition=0, offset=6, key=b"k", value=b"x", timestamp=(1, 124)),
        Message(topic="t", partition=0, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)),
    ]  # fmt: skip
    chunks, errors, _ = by_partition(messages)
    assert [r.offset for r in chunks[TP0]] == [5, 6]
    first = chunks[TP0][0]
    assert (first.key, first.json(), first.headers, first.timestamp_ms) == (
        b"k", {"a": 1}, [("h", b"1")], 123,
    )  # fmt: skip
    assert (first.position, first.timestamp_type, first.serialized_value_size) == (5, 0, 8)
    none = chunks[TP1][0]
    assert (none.key, none.value, none.timestamp_type, none.headers) == (None, None, 1, ())
    assert [e.code() for e in errors] == [KafkaError.UNKNOWN_TOPIC_OR_PART]


def test_the_client_never_commits_or_stores_offsets_itself_and_does_not_stall():
    conf = consumer_conf(config(group_instance_id="pod-0"))
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["fetch.queue.backoff.ms"] == FETCH_QUEUE_BACKOFF_MS <= 50
    assert conf["group.instance.id"] == "pod-0" and conf["group.protocol"] == "classic"
    kip848 = consumer_conf(config(group_protocol="consumer"))
    assert "session.timeout.ms" not in kip848 and "partition.assignment.strategy" not in kip848


def test_aborted_transactions_are_not_read_unless_asked_for():
    assert consumer_conf(config())["isolation.level"] == "read_committed"
    uncommitted = config(isolation_level="read_uncommitted")
    assert consumer_conf(uncommitted)["isolation.level"] == "read_uncommitted"


def test_tls_and_sasl_settings_map_to_librdkafkas_names(tmp_path):
    conf = consumer_conf(
        config(
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username="alice", sasl_plain_password="s3cret",
        )
    )  # fmt: skip
    assert (conf["security.protocol"], conf["sasl.mechanism"]) == (
        "sasl_plaintext",
        "SCRAM-SHA-512",
    )
    assert (conf["sasl.username"], conf["sasl.password"]) == ("alice", "s3cret")


async def test_make_source_picks_the_client_the_config_names():
    assert type(make_source(config())).__name__ == "LibrdkafkaSource"
    aio = KafkaSourceConfig.model_validate({"topics": ["t"]})
    assert type(make_source(aio)).__name__ == "KafkaSource"


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ({"group_protocol": "consumer"}, "needs source.client = 'librdkafka'"),
        (
            {"client": "librdkafka", "group_protocol": "consumer", "session_timeout_ms": 6000},
            "source.session_timeout_ms with source.group_protocol = 'consumer'",
        ),
        ({"group_instance_id": "${NO_SUCH_VARIABLE_H14}"}, "cannot expand it"),
    ],
)
def test_combinations_that_cannot_work_are_one_config_error_each(source, says):
    with pytest.raises(ValueError, match=None) as refused:
        WorkerConfig.model_validate({"source": {"topics": ["t"], **source}})
    assert says in str(refused.value)


def test_group_instance_id_expands_the_hostname(monkeypatch):
    monkeypatch.setenv("HOSTNAME", "worker-3")
    assert config(group_instance_id="${HOSTNAME}").group_instance_id == "worker-3"


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ({"max_partition_fetch_bytes": 1_500_000_000}, "source.max_partition_fetch_bytes = "),
        ({"fetch_min_bytes": 200_000_000}, "source.fetch_min_bytes = 200000000: at most"),
        ({"fetch_max_bytes": 2**31 - 1}, "source.fetch_max_bytes = 2147483647: at most"),
        (
            {"max_poll_interval_ms": 5000, "rebalance_timeout_ms": 4000},
            "source.max_poll_interval_ms = 5000: at least source.session_timeout_ms",
        ),
    ],
)
def test_values_librdkafka_refuses_are_config_errors_not_a_traceback_at_start(source, says):
    """aiokafka takes these; librdkafka's `Consumer()` raised them at start (a traceback)."""
    with pytest.raises(ValueError) as refused:
        config(**source)
    assert says in str(refused.value)
    config(client="aiokafka", **source)  # the other client is not refused


@pytest.mark.parametrize(
    "source",
    [
        {"fetch_max_bytes": 1024},  # below librdkafka's message.max.bytes default
        {"fetch_max_bytes": 2_147_483_135, "max_partition_fetch_bytes": 1_000_000_000},
        {"fetch_min_bytes": 100_000_000, "fetch_max_wait_ms": 0},
        {"session_timeout_ms": 3_600_000, "max_poll_interval_ms": 3_600_000},
    ],
)
def test_every_config_the_validator_accepts_builds_a_librdkafka_consumer(source):
    from confluent_kafka import Consumer

    conf = consumer_conf(config(bootstrap_servers=["127.0.0.1:9"], **source))
    Consumer(conf).close()  # raised KafkaException (_INVALID_ARG) for these before


class CallbackConsumer(RecordingConsumer):
    """Also records, in one list with the commits, what a rebalance callback tells it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        #: The thread of each commit and unassign, in order.
        self.threads: list[int] = []

    def commit(self, offsets: list[RdTopicPartition], asynchronous: bool) -> list[Any]:
        self.calls.append(("commit", *[(tp.partition, tp.offset) for tp in offsets]))
        self.threads.append(threading.get_ident())
        return super().commit(offsets, asynchronous)

    def unassign(self) -> None:
        self.calls.append(("unassign",))
        self.threads.append(threading.get_ident())

    def resume(self, partitions: list[RdTopicPartition]) -> None:
        self.calls.append(("resume", *[tp.partition for tp in partitions]))


class DrainingListener:
    """As the worker's: a revoke drains and commits the handled positions; a loss only
    abandons, while a commit of the committer's (here: made during it) may still come."""

    def __init__(self, source: LibrdkafkaSource, handled: dict[TopicPartition, int]) -> None:
        self.source, self.handled = source, handled
        self.said: list[tuple[str, list[TopicPartition]]] = []
        self.refused: list[set[TopicPartition]] = []

    async def on_assigned(self, partitions: Any) -> None: ...

    async def _commit(self, partitions: Any) -> None:
        try:
            await self.source.commit({tp: self.handled[tp] for tp in partitions})
        except OwnershipLost as exc:
            self.refused.append(set(exc.lost))

    async def on_revoked(self, partitions: Any) -> None:
        self.said.append(("revoked", list(partitions)))
        await self._commit(partitions)

    async def on_lost(self, partitions: Any) -> None:
        self.said.append(("lost", list(partitions)))
        await self._commit(partitions)


async def bridged(handled: dict[TopicPartition, int]) -> tuple[Any, CallbackConsumer, Any]:
    from worker.sources.kafka.librdkafka_rebalance import RebalanceBridge

    source = LibrdkafkaSource(config())
    consumer = CallbackConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    source._loop = asyncio.get_running_loop()
    listener = DrainingListener(source, handled)
    source._listener = listener  # type: ignore[assignment]
    await source.assigned([TP0, TP1], [0, 0])
    return RebalanceBridge(source, source._loop, source._calls), consumer, listener


async def on_poller(bridge: Any, callback: Any, *args: Any) -> None:
    """As librdkafka calls a rebalance callback: inside consume(), on the poller thread."""
    poller = bridge._owner._poller
    await asyncio.get_running_loop().run_in_executor(poller, callback, *args)


async def test_a_revoke_commits_the_handled_positions_before_it_releases_the_partitions():
    """librdkafka's rebalance goes on once the callback unassigns: a release before the
    drain's commit would let the next owner start from the old commit beside this one."""
    bridge, consumer, listener = await bridged({TP0: 41, TP1: 7})
    revoke = [RdTopicPartition("t", 0), RdTopicPartition("t", 1)]
    await on_poller(bridge, bridge.on_revoke, consumer, revoke)
    assert listener.said == [("revoked", [TP0, TP1])] and listener.refused == []
    assert consumer.calls == [("commit", (0, 42), (1, 8)), ("unassign",), ("resume", 0, 1)]
    # On the callback's own thread: a commit from another thread stalls until the poller
    # thread stops consuming (the real broker's test: test_librdkafka_faults).
    assert len(set(consumer.threads)) == 1


async def test_a_lost_partition_is_not_committed_even_by_a_commit_made_while_it_is_lost():
    """Another member owns it already: a commit of it (a drain's, the committer's) would
    move that member's offset. The listener hears `lost`, never `revoked`."""
    bridge, consumer, listener = await bridged({TP1: 5})
    lose = [RdTopicPartition("t", 1)]
    await on_poller(bridge, bridge.on_lost, consumer, lose)
    assert listener.said == [("lost", [TP1])] and listener.refused == [{TP1}]
    assert [c for c in consumer.calls if c[0] == "commit"] == []


def test_every_problem_of_the_client_combination_is_its_own_config_error_line(tmp_path):
    """Three problems, three lines (exit 2): the first version reported only the first."""
    from worker.config_load import ConfigError, load_config

    path = tmp_path / "w.toml"
    path.write_text(
        '[source]\nclient = "librdkafka"\ntopics = ["t"]\ngroup_protocol = "consumer"\n'
        "session_timeout_ms = 6000\nheartbeat_interval_ms = 1000\nfetch_min_bytes = 200000000\n"
        '[handler]\ntarget = "json:dumps"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path, [], {})
    assert [line.split(" ")[0] for line in refused.value.problems] == [
        "source.session_timeout_ms", "source.heartbeat_interval_ms", "source.fetch_min_bytes",
    ]  # fmt: skip


class HeldConsumer(RecordingConsumer):
    """`consume()` waits until the test lets it return (the poller held, as by a commit
    waiting for a coordinator or a rebalance callback); counts how often it is called."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.consumes = 0

    def consume(self, count: int, timeout: float) -> list[Any]:
        self.consumes += 1
        self.release.wait(5)
        return [Message(topic="t", partition=0, offset=3, value=b"v", timestamp=(1, 1))]


async def test_a_fetch_returns_in_time_while_the_poller_is_held_and_the_poll_is_not_lost():
    """The main loop sees a SIGTERM only between fetches: a fetch waiting for a held poller
    kept the worker from even starting its shutdown. It returns nothing instead; its poll
    stays pending (no second `consume()`: none runs ahead of the pipeline) and the next
    fetch returns its records."""
    source, _ = await started_source()
    consumer = HeldConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    assert await source.fetch(0.01) == {}
    assert await source.fetch(0.01) == {}
    assert consumer.consumes == 1
    consumer.release.set()
    chunks = await asyncio.wait_for(source.fetch(0.01), 5)
    assert [r.offset for r in chunks[TP0]] == [3] and consumer.consumes == 1


class FailingHeldConsumer(HeldConsumer):
    def close(self) -> None: ...

    def consume(self, count: int, timeout: float) -> list[Any]:
        super().consume(count, timeout)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


async def test_a_poll_left_pending_at_stop_is_dropped_and_its_error_logged(caplog):
    """A bounded fetch may leave a poll pending when the worker stops: its records were
    never handed over (so nothing past them is committed) and go with the consumer; an
    error it raised is logged instead of asyncio's "never retrieved" warning."""
    source, _ = await started_source()
    consumer = FailingHeldConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    assert await source.fetch(0.01) == {}
    stopping = asyncio.ensure_future(source.stop())
    consumer.release.set()
    await asyncio.wait_for(stopping, 5)
    await asyncio.sleep(0)  # the done callback's turn
    assert "event=poll_failed_at_stop" in caplog.text


class OpenTransactionConsumer(RecordingConsumer):
    """Restarted at an open transaction: nothing to consume, so librdkafka's position stays
    unset (-1001), and its cached high watermark (9) is past the last stable offset (5)."""

    def consume(self, count: int, timeout: float) -> list[Any]:
        return []

    def get_watermark_offsets(self, partition: RdTopicPartition, cached: bool) -> tuple[int, int]:
        return (0, 9)

    def position(self, partitions: list[RdTopicPartition]) -> list[RdTopicPartition]:
        return [RdTopicPartition(tp.topic, tp.partition, -1001) for tp in partitions]


@pytest.mark.parametrize(("stable_end", "waits"), [(5, False), (9, True)])
async def test_a_partition_with_nothing_consumed_waits_only_up_to_its_last_stable_offset(
    stable_end: int, waits: bool
):
    """Committed at 5 and nothing consumed since the assignment: what waits is counted from
    the commit, and only up to the last stable offset. Counted up to the high watermark, a
    worker restarted (or given the partition back) at an open transaction was ended by the
    commit watchdog, and its restart too: a crash loop while the transaction stays open."""
    source = LibrdkafkaSource(config())
    source._consumer = OpenTransactionConsumer()  # type: ignore[assignment]
    source._loop = asyncio.get_running_loop()

    class Listener:
        async def on_assigned(self, partitions: Any) -> None: ...

    source._listener = Listener()  # type: ignore[assignment]
    await source.assigned([TP0], [5])
    partitions = {"0": {"hi_offset": 9, "ls_offset": stable_end}}
    source._stable.on_stats(orjson.dumps({"topics": {"t": {"partitions": partitions}}}).decode())
    assert await source.fetch(0.01) == {}
    assert source.waiting(TP0) is waits


class QueueConsumer(RecordingConsumer):
    """librdkafka's `consume(count, timeout)`: waits until `count` messages are queued, or
    the timeout passes, and returns what is queued then (up to `count`)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Any] = []
        self.changed = threading.Condition()
        self.blocked = threading.Event()  # a consume() is waiting for messages

    def put(self, *offsets: int) -> None:
        with self.changed:
            self.queued += [Message(topic="t", partition=0, offset=o, value=b"v",
                                    timestamp=(1, 1)) for o in offsets]  # fmt: skip
            self.changed.notify_all()

    def consume(self, count: int, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.queued) < count and (left := deadline - time.monotonic()) > 0:
                self.blocked.set()
                self.changed.wait(left)
            out, self.queued = self.queued[:count], self.queued[count:]
        return out


async def test_a_fetch_returns_what_is_queued_without_waiting_for_a_full_batch():
    """librdkafka's `consume(10000, timeout)` waits for 10,000 messages: a fetch waited for
    the pre-fetch queue to fill while the pipeline was idle (the worker at 0.41 of the raw
    loop's rate), and a trickle of records waited out the whole fetch timeout each time."""
    source, _ = await started_source()
    consumer = QueueConsumer()
    source._consumer = consumer  # type: ignore[assignment]
    consumer.put(3, 4)
    chunks = await asyncio.wait_for(source.fetch(5), 2.5)
    assert [r.offset for r in chunks[TP0]] == [3, 4]
    # Nothing queued: it waits for the first message, then takes what came with it.
    fetching = asyncio.ensure_future(source.fetch(5))
    await asyncio.get_running_loop().run_in_executor(None, consumer.blocked.wait, 4)
    consumer.put(5, 6, 7)
    chunks = await asyncio.wait_for(fetching, 2.5)
    assert [r.offset for r in chunks[TP0]] == [5, 6, 7]
    assert await source.fetch(0.01) == {}


class SplitConsumer(CallbackConsumer):
    """`consume_queued`'s two calls: the first (`consume(1, timeout)`) returns a record of
    TP1; librdkafka serves TP1's revoke inside the second (`consume(count - 1, 0)`),
    after that record left it, and returns a record of TP0 with it."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: Any = None

    def consume(self, count: int, timeout: float) -> list[Any]:
        if count > 1 and timeout == 0 and not self.calls:  # the first, empty look
            self.calls.append(("looked",))
            return []
        if count == 1:
            return [Message(topic="t", partition=1, offset=3, value=b"v", timestamp=(1, 1))]
        self.bridge.on_revoke(self, [RdTopicPartition("t", 1)])  # on the poller thread
        return [Message(topic="t", partition=0, offset=5, value=b"v", timestamp=(1, 1))]


async def test_a_record_taken_before_a_revoke_in_the_same_fetch_is_not_handed_out():
    """The revoke ran inside the fetch's second consume(): the record of the revoked
    partition from the first is the next owner's (it starts from the commit the revoke
    made); handed out here, it is handled beside that owner and committed after it."""
    bridge, _, listener = await bridged({TP0: 4, TP1: 2})
    consumer = SplitConsumer()
    consumer.bridge, bridge._owner._consumer = bridge, consumer
    chunks = await asyncio.wait_for(bridge._owner.fetch(1), 5)
    assert listener.said == [("revoked", [TP1])]
    assert ("commit", (1, 3)) in consumer.calls  # the revoke committed what was handled
    assert {tp: [r.offset for r in rs] for tp, rs in chunks.items()} == {TP0: [5]}
