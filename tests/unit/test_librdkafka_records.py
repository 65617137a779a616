"""librdkafka's records: a handler, the Lambda event builder, the handler-process packing
and pickling see the same fields as for aiokafka's `ConsumerRecord` of the same message.

Messages are confluent-kafka's own type, made with its (testing) constructor: the record
type reads them through the same methods as the consumer's messages.
"""

from __future__ import annotations

import pickle

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.lambda_compat.events import kafka_event
from worker.sources.kafka import record as aiokafka_records
from worker.sources.kafka.librdkafka_records import TRAITS, LibrdkafkaRecord, by_partition

FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "checksum", "serialized_key_size", "serialized_value_size", "headers")  # fmt: skip


def _copied(m: Message) -> ConsumerRecord:
    """The message as the client's previous conversion made it, field by field."""
    kind, ts = m.timestamp()
    key, value = m.key(), m.value()
    return ConsumerRecord(m.topic(), m.partition(), m.offset(), ts, (0, 0, 1)[kind], key, value,
                          None, -1 if key is None else len(key),
                          -1 if value is None else len(value), m.headers() or ())  # fmt: skip


def _fields(r: object) -> tuple[object, ...]:
    return tuple(getattr(r, name) for name in FIELDS)


message = st.builds(
    lambda topic, partition, offset, key, value, headers, kind, ts: Message(
        topic=topic, partition=partition, offset=offset, key=key, value=value,
        headers=headers or None, timestamp=(kind, ts),
    ),
    st.sampled_from(["t", "u"]), st.integers(0, 2), st.integers(0, 10**12),
    st.none() | st.binary(max_size=20), st.none() | st.binary(max_size=60),
    st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)), max_size=3),
    st.integers(0, 2), st.integers(0, 2**41),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=30))
def test_records_carry_the_fields_of_the_copied_records_grouped_in_order(messages):
    chunks, errors, ends = by_partition(messages)
    assert errors == [] and ends == {}
    expected: dict[TopicPartition, list[tuple[object, ...]]] = {}
    for m in messages:
        expected.setdefault(TopicPartition(m.topic(), m.partition()), []).append(
            _fields(_copied(m))
        )
    assert {tp: [_fields(r) for r in records] for tp, records in chunks.items()} == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(message, min_size=1, max_size=30))
def test_the_lambda_event_is_the_one_of_the_copied_records(messages):
    records = [LibrdkafkaRecord(m) for m in messages]
    copied = [_copied(m) for m in messages]
    built, plain = kafka_event(records, ["a:1"]), kafka_event(copied, ["a:1"])
    assert built == plain
    assert [list(r) for g in built["records"].values() for r in g] == [
        list(r) for g in plain["records"].values() for r in g
    ]  # the same key order too


def test_one_topic_groups_by_partition_alone_and_two_topics_apart():
    messages = [
        Message(topic="t", partition=0, offset=1, value=b"a"),
        Message(topic="u", partition=0, offset=7, value=b"b"),
        Message(topic="t", partition=1, offset=3, value=b"c"),
        Message(topic="t", partition=0, offset=2, value=b"d"),
    ]
    chunks, _, _ = by_partition(messages)
    assert {tp: [r.value for r in rs] for tp, rs in chunks.items()} == {
        TopicPartition("t", 0): [b"a", b"d"],
        TopicPartition("u", 0): [b"b"],
        TopicPartition("t", 1): [b"c"],
    }
    one, _, _ = by_partition([m for m in messages if m.topic() == "t"], "t")
    assert {tp: [r.offset for r in rs] for tp, rs in one.items()} == {
        TopicPartition("t", 0): [1, 2],
        TopicPartition("t", 1): [3],
    }


def test_errors_are_not_records_and_keep_their_order():
    unknown, other = KafkaError(KafkaError._UNKNOWN_PARTITION), KafkaError(KafkaError._TRANSPORT)
    messages = [
        Message(topic="t", partition=0, offset=1, value=b"a"),
        Message(topic="t", partition=0, error=other),
        Message(topic="t", partition=0, offset=2, value=b"b"),
        Message(topic="t", partition=1, error=unknown),
    ]
    chunks, errors, ends = by_partition(messages, "t")
    assert [r.offset for r in chunks[TopicPartition("t", 0)]] == [1, 2]
    assert [e.code() for e in errors] == [KafkaError._TRANSPORT, KafkaError._UNKNOWN_PARTITION]
    assert ends == {}


def test_a_partitions_end_is_no_error_but_where_it_was_reached():
    """`enable.partition.eof`: the end reached after a reset to an emptied log is the only
    word of it (`expiry.Continuity`); never an error (it would distrust every position)."""
    eof = KafkaError(KafkaError._PARTITION_EOF)
    messages = [
        Message(topic="t", partition=0, offset=1, value=b"a"),
        Message(topic="t", partition=0, offset=2, error=eof),
        Message(topic="t", partition=1, offset=100, error=eof),
    ]
    chunks, errors, ends = by_partition(messages, "t")
    assert [r.offset for r in chunks[TopicPartition("t", 0)]] == [1]
    assert errors == []
    assert ends == {TopicPartition("t", 0): 2, TopicPartition("t", 1): 100}


def test_a_record_has_the_record_api():
    m = Message(topic="t", partition=2, offset=9, key=b"k", value=b'{"a": [1]}',
                headers=[("trace", b"x")], timestamp=(2, 1_700_000_000_123))  # fmt: skip
    r = LibrdkafkaRecord(m)
    assert (r.json(), r.position, r.timestamp_ms, r.timestamp_type) == (
        {"a": [1]}, 9, 1_700_000_000_123, 1,
    )  # fmt: skip
    assert (r.sequence_number, r.shard_id, r.checksum) == (None, None, None)
    assert TRAITS.size(r) == 10 and TRAITS.timestamp_ms(r) == 1_700_000_000_123
    assert "offset=9" in repr(r) and "LibrdkafkaRecord" in repr(r)


def test_pickled_and_packed_records_arrive_as_consumer_records_with_every_field():
    messages = [
        Message(topic="t", partition=1, offset=4, key=b"k", value=b'{"n": 1}',
                headers=[("h", b"v"), ("null", None)], timestamp=(2, 77)),
        Message(topic="t", partition=1, offset=5, key=None, value=None, timestamp=(0, -1)),
    ]  # fmt: skip
    records = [LibrdkafkaRecord(m) for m in messages]
    again = pickle.loads(pickle.dumps(records))
    assert all(type(r) is ConsumerRecord for r in again)
    assert [_fields(r) for r in again] == [_fields(r) for r in records]
    assert again[0].json() == {"n": 1} and again[1].position == 5
    # The packing to handler processes: the aiokafka records' own, columns either way.
    assert TRAITS.pack is aiokafka_records.pack and TRAITS.unpack is aiokafka_records.unpack
    unpacked = TRAITS.unpack(pickle.loads(pickle.dumps(TRAITS.pack(records))))
    assert [_fields(r) for r in unpacked] == [_fields(r) for r in records]
