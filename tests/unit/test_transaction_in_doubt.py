"""Exactly once, a transaction whose commit is in doubt: `commit_transaction` raised (or
the round timed out) after the broker had committed it. The retried round must not put
its outputs in a second transaction, or read_committed readers see them twice.

A unit test of `TransactionalOutputs` alone: the producer is a stand-in that keeps what
a broker would have committed (the boundary where the fault is injected); the real
broker's side is in tests/integration/test_kafka_exactly_once.py."""

from collections import namedtuple

from aiokafka.errors import KafkaTimeoutError

import worker.outputs.transactions as transactions
from worker.config import WorkerConfig
from worker.observe.metrics import Metrics
from worker.outputs.ledger import OutputLedger
from worker.outputs.outbox import Output
from worker.outputs.sink import OutputsFailed
from worker.sources.base import NothingCommitted

TP = namedtuple("TP", "topic partition")
KEY = TP("in", 0)


class Broker:
    def __init__(self) -> None:
        self.outputs: list[bytes] = []  # what read_committed readers see
        self.offset: int | None = None  # the group's committed offset
        self.lose_next_commit_response = False


class FakeProducer:
    broker: Broker

    def __init__(self, **settings) -> None:
        self._pending: list[bytes] = []
        self._offsets: int | None = None

    async def start(self) -> None:  # InitProducerId: what was open is aborted
        self._pending = []

    async def stop(self) -> None:
        return None

    async def begin_transaction(self) -> None:
        self._pending = []

    async def send_offsets_to_transaction(self, offsets, group_id) -> None:
        self._offsets = offsets[KEY]

    async def commit_transaction(self) -> None:
        b = self.broker
        b.outputs.extend(self._pending)
        b.offset = self._offsets
        if b.lose_next_commit_response:
            b.lose_next_commit_response = False
            raise KafkaTimeoutError("the EndTxn response was lost")


class Source:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def commit_in_transaction(self, positions, commit) -> None:
        await commit({k: pos + 1 for k, pos in positions.items()}, "group")

    async def committed_offset(self, key):
        return self.broker.offset

    async def resume_from_committed(self, keys) -> None:
        return None


class Holder:
    key = KEY

    def __init__(self) -> None:
        self.ledger = OutputLedger()

    def outputs_upto(self, position):
        return self.ledger.upto(position)

    def mark_outputs_sent(self, position):
        self.ledger.drop_upto(position)


async def test_a_retried_round_does_not_resend_outputs_its_in_doubt_transaction_committed(
    monkeypatch,
):
    broker = Broker()
    FakeProducer.broker = broker
    monkeypatch.setattr(transactions, "AIOKafkaProducer", FakeProducer)

    async def produce(producer, outputs):
        producer._pending.extend(o.value for o in outputs)

    monkeypatch.setattr(transactions, "produce", produce)
    config = WorkerConfig.model_validate(
        {
            "source": {"kind": "kafka", "topics": ["in"]},
            "outputs": {"topics": ["out"], "exactly_once": True},
        }
    )
    sink = transactions.TransactionalOutputs({}, config, Metrics().outputs, "kafka", 1.0)
    source, p = Source(broker), Holder()
    await sink.assigned(source, [KEY])
    p.ledger.add(0, 9, [Output("out", b"o%d" % i, None, [], i) for i in range(10)])
    broker.lose_next_commit_response = True
    failures = await sink.checkpoint(source, [(p, 9)])
    assert KEY in failures  # the committer will try this partition again
    p.ledger.add(10, 19, [Output("out", b"o%d" % i, None, [], i) for i in range(10, 20)])
    assert await sink.checkpoint(source, [(p, 19)]) == {}
    assert broker.offset == 20
    assert broker.outputs == [b"o%d" % i for i in range(20)]  # each once


async def test_a_transaction_failing_before_its_commit_says_none_of_it_landed(monkeypatch):
    """Aborted before `commit_transaction`: certainly not committed (the source may owe a
    start again: `NothingCommitted`). Failing in it: maybe committed, never said so."""
    broker = Broker()
    FakeProducer.broker = broker
    monkeypatch.setattr(transactions, "AIOKafkaProducer", FakeProducer)

    async def produce(producer, outputs):
        raise KafkaTimeoutError("an output not acknowledged")

    config = WorkerConfig.model_validate(
        {
            "source": {"kind": "kafka", "topics": ["in"]},
            "outputs": {"topics": ["out"], "exactly_once": True},
        }
    )
    sink = transactions.TransactionalOutputs({}, config, Metrics().outputs, "kafka", 1.0)
    source, p = Source(broker), Holder()
    await sink.assigned(source, [KEY])
    p.ledger.add(0, 9, [Output("out", b"o%d" % i, None, [], i) for i in range(10)])
    monkeypatch.setattr(transactions, "produce", produce)
    failures = await sink.checkpoint(source, [(p, 9)])
    assert isinstance(failures[KEY], NothingCommitted)

    async def fine(producer, outputs):
        return None

    monkeypatch.setattr(transactions, "produce", fine)
    broker.lose_next_commit_response = True
    failures = await sink.checkpoint(source, [(p, 9)])
    assert isinstance(failures[KEY], OutputsFailed)
    assert not isinstance(failures[KEY], NothingCommitted)
