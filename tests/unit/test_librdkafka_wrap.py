"""The C wrapper of librdkafka's messages (`worker/sources/kafka/_librdkafka_wrap.c`): the
records `LibrdkafkaRecord.__init__` makes, field by field, for any message; no reference
leaked or stolen; a wrong class refused at bind; odd input and a list changed under it
are errors, never a read of freed memory or a list with holes seen by Python code."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.sources.kafka import librdkafka_records
from worker.sources.kafka.librdkafka_records import LibrdkafkaRecord

FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "serialized_key_size", "serialized_value_size", "headers")  # fmt: skip

c_wrap = librdkafka_records._wrap
python_wrap = librdkafka_records._python_wrap

message = st.builds(
    lambda topic, partition, offset, key, value, headers, kind, ts: Message(
        topic=topic, partition=partition, offset=offset, key=key, value=value,
        headers=headers or None, timestamp=(kind, ts),
    ),
    st.sampled_from(["t", "u"]), st.integers(0, 2), st.integers(0, 10**12),
    st.none() | st.binary(max_size=20),
    st.none() | st.binary(max_size=300) | st.text(max_size=5) | st.binary().map(bytearray),
    st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)), max_size=3),
    st.integers(0, 2), st.integers(0, 2**41),
)  # fmt: skip


def test_the_c_module_is_built_where_a_compiler_is():
    """CI installs with gcc: a build that failed there (it is optional, so the install
    would go on) must fail here, not leave the worker on the slower twin unseen."""
    assert c_wrap is not python_wrap


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=40))
def test_wrapped_records_are_the_records_init_makes(messages):
    made, expected = c_wrap(messages), python_wrap(messages)
    assert [type(r) for r in made] == [LibrdkafkaRecord] * len(messages)
    assert [[getattr(r, f) for f in FIELDS] for r in made] == [
        [getattr(r, f) for f in FIELDS] for r in expected
    ]
    assert all(r._message is m for r, m in zip(made, messages, strict=True))
    assert not any(hasattr(r, "_headers_unreadable") for r in made)


def test_no_reference_is_leaked_or_stolen():
    messages = [Message(topic="t", offset=i, value=b"v" * (i % 300)) for i in range(50)]
    value = messages[7].value()
    before = [sys.getrefcount(m) for m in messages], sys.getrefcount(value)
    for _ in range(200):
        made = c_wrap(messages)
        del made
    assert ([sys.getrefcount(m) for m in messages], sys.getrefcount(value)) == before
    made = c_wrap(messages)
    assert sys.getrefcount(messages[7]) == before[0][7] + 1  # the record's
    assert sys.getrefcount(value) == before[1] + 1
    del made


def test_a_value_without_a_length_is_the_error_init_raises():
    messages = [Message(value=b"ok"), Message(value=5)]
    with pytest.raises(TypeError):
        python_wrap(messages)
    with pytest.raises(TypeError):
        c_wrap(messages)


@pytest.mark.parametrize("messages", [(), (Message(value=b"x"),), [Message(value=b"x"), b"x"]])
def test_anything_but_a_list_of_messages_is_refused(messages):
    with pytest.raises(TypeError):
        c_wrap(messages)


def test_bind_refuses_a_class_without_the_slots_and_keeps_the_class_bound():
    from worker.sources.kafka._librdkafka_wrap import bind

    class TwoSlots:
        __slots__ = ("_message", "value")

    class ReadOnly:
        __slots__ = ("_message", "value")
        serialized_value_size = property(lambda self: 0)

    class Inherited(LibrdkafkaRecord):
        __slots__ = ()

    for wrong in (object, int, TwoSlots, ReadOnly, Inherited):
        with pytest.raises(TypeError):
            bind(wrong, Message)
    assert type(c_wrap([Message(value=b"x")])[0]) is LibrdkafkaRecord


@contextmanager
def collecting_at_every_allocation(callback) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Run `callback` at every collection, with a collection at (about) every allocation."""
    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)


def test_a_list_shrunk_while_it_is_wrapped_is_an_error():
    messages = [Message(value=b"v" * 100) for _ in range(100)]

    def shrink(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and messages:
            messages.pop()

    with collecting_at_every_allocation(shrink), pytest.raises(RuntimeError, match="size"):
        c_wrap(messages)


def test_python_code_never_sees_the_half_built_list():
    """A gc callback that reads every list the collector knows of: the result, while it
    holds NULL slots, must not be one of them (reading a NULL slot crashes)."""
    messages = [Message(value=b"v" * 100) for _ in range(200)]
    seen: list[int] = []

    def read_all(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            lists = [o for o in gc.get_objects() if type(o) is list]
            seen.append(sum(len(o[:]) for o in lists))

    with collecting_at_every_allocation(read_all):
        made = c_wrap(messages)
    assert seen  # the callback ran while records were made
    assert [r.value for r in made] == [m.value() for m in messages]


@pytest.fixture
def rebinds() -> Iterator[None]:
    """A test that binds another class: `LibrdkafkaRecord` bound again after it."""
    from worker.sources.kafka._librdkafka_wrap import bind

    try:
        yield
    finally:
        bind(LibrdkafkaRecord, Message)


def test_a_class_bound_while_a_list_is_wrapped_is_for_the_next_call(rebinds):
    """A gc callback (or another thread) binding a class of another layout mid-call: the
    records already allocated must not be stored into at its offsets (a heap overflow,
    `bad trailing pad byte` under PYTHONMALLOC=debug, before the fix)."""
    from worker.sources.kafka._librdkafka_wrap import bind

    class Wider:
        __slots__ = ("_message", "a", "b", "c", "serialized_value_size", "value")

    messages = [Message(value=b"v" * 10) for _ in range(50)]

    def rebind(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            bind(Wider, Message)

    with collecting_at_every_allocation(rebind):
        made = c_wrap(messages)
    assert [type(r) for r in made] == [LibrdkafkaRecord] * len(messages)
    assert [(r._message, r.value, r.serialized_value_size) for r in made] == [
        (m, m.value(), 10) for m in messages
    ]
    assert type(c_wrap(messages[:1])[0]) is Wider


def test_a_message_subclass_is_read_through_its_own_value():
    """`__init__` calls `message.value()`: a subclass's override, not `Message.value`."""

    class Decoded(Message):  # type: ignore[misc]
        def value(self) -> bytes:  # type: ignore[override]
            return b"decoded"

    messages = [Message(value=b"raw"), Decoded(value=b"raw")]
    made, expected = c_wrap(messages), python_wrap(messages)
    assert (
        [(r.value, r.serialized_value_size) for r in made]
        == [(r.value, r.serialized_value_size) for r in expected]
        == [(b"raw", 3), (b"decoded", 7)]
    )


def test_bind_refuses_a_subclass_of_a_c_type(rebinds):
    """Allocated without `__new__`, a set's or an exception's struct would be zeros, never
    initialised: its repr, methods or dealloc crashed (exit 139)."""
    from worker.sources.kafka._librdkafka_wrap import bind

    slots = ("_message", "value", "serialized_value_size")
    for base in (set, dict, Exception, bytearray):
        wrong = type("Wrong", (base,), {"__slots__": slots})
        with pytest.raises(TypeError):
            bind(wrong, Message)
    assert type(c_wrap([Message(value=b"x")])[0]) is LibrdkafkaRecord


def test_bind_refuses_one_slot_under_another_name(rebinds):
    """`value` set to `_message`'s descriptor made two fields one offset: the message's
    reference overwritten by the value, leaked, at every record."""
    from worker.sources.kafka._librdkafka_wrap import bind

    class Aliased:
        __slots__ = ("_message", "serialized_value_size", "value")

    Aliased.value = Aliased.__dict__["_message"]
    with pytest.raises(TypeError):
        bind(Aliased, Message)


def test_a_python_record_class_of_python_bases_binds(rebinds):
    from worker.sources.kafka._librdkafka_wrap import bind

    class Base:
        __slots__ = ("__weakref__",)

    class Record(Base):
        __slots__ = ("__dict__", "_message", "serialized_value_size", "value")

    bind(Record, Message)
    (made,) = c_wrap([Message(value=b"abc")])
    assert (type(made), made.value, made.serialized_value_size, made.__dict__) == (
        Record,
        b"abc",
        3,
        {},
    )


def test_by_partition_takes_any_sequence_as_the_python_twin_does():
    """`by_partition` is typed for a Sequence; the C `_wrap` takes lists only (a tuple's
    slices are tuples: TypeError where the twin made the records)."""
    messages = (Message(topic="t", partition=0, value=b"x"), Message(topic="t", partition=1))
    chunks, _, _ = librdkafka_records.by_partition(messages, "t")
    assert [[r._message for r in rs] for rs in chunks.values()] == [[m] for m in messages]
