"""The C wrapper of librdkafka's messages (`worker/sources/kafka/_librdkafka_wrap.c`): the
records `LibrdkafkaRecord.__init__` makes, field by field, for any message; no reference
leaked or stolen; a wrong class refused at bind; odd input and a list changed under it
are errors, never a read of freed memory or a list with holes seen by Python code."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.sources.kafka import _librdkafka_wrap, librdkafka_records
from worker.sources.kafka.librdkafka_records import LibrdkafkaRecord

FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "serialized_key_size", "serialized_value_size", "headers")  # fmt: skip

python_wrap = librdkafka_records._python_wrap


def c_wrap(messages: Any) -> list[Any]:
    """The records the C module makes of `messages`, in order (every run's, one list)."""
    return [r for _, rs in librdkafka_records._runs(messages, True) for r in rs]


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
    assert librdkafka_records._runs is not librdkafka_records._python_runs


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
        made = c_runs(messages, False)  # the C call itself: no allocation before it binds
    made = [r for _, rs in made for r in rs]
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


# -- runs: a fetch's records by partition in one pass (`clean_chunks`) -------------------------
c_runs = librdkafka_records._runs
python_runs = librdkafka_records._python_runs

fetched = st.builds(
    lambda topic, partition, offset, value: Message(
        topic=topic, partition=partition, offset=offset, value=value
    ),
    st.sampled_from(["t", "u"]), st.sampled_from([0, 1, 2, 300]), st.integers(0, 10**6),
    st.none() | st.binary(max_size=50),
)  # fmt: skip
#: A fetch, now and then with an error among its messages (as librdkafka delivers one).
with_errors = st.lists(
    fetched
    | st.sampled_from([KafkaError._BAD_MSG, KafkaError._PARTITION_EOF]).map(
        lambda code: Message(topic="t", partition=0, error=KafkaError(code))
    ),
    max_size=40,
)


def shown(runs: list[Any] | None) -> Any:
    """Runs as plain data: keys and each record's fields and message."""
    if runs is None:
        return None
    return [(key, [(r._message, r.value, r.serialized_value_size) for r in rs])
            for key, rs in runs]  # fmt: skip


def test_the_c_module_reads_the_installed_messages_fields_directly():
    """The probe found where this confluent-kafka's `Message` keeps its fields: a release
    that moved them must fail here (the methods would still be right, only slower)."""
    assert _librdkafka_wrap.direct() is not None


@settings(max_examples=400, deadline=None)
@given(with_errors, st.booleans())
def test_runs_are_the_runs_the_python_twin_makes(messages, with_topic):
    made, expected = c_runs(messages, with_topic), python_runs(messages, with_topic)
    assert shown(made) == shown(expected)
    assert (made is None) == any(m.error() is not None for m in messages)
    if made is not None:
        assert [m for _, rs in made for m in map(lambda r: r._message, rs)] == messages
        assert all(type(r) is LibrdkafkaRecord for _, rs in made for r in rs)


def test_clean_chunks_group_a_partitions_runs_and_tell_topics_apart():
    where = [("t", 1, 0), ("t", 1, 1), ("t", 2, 0), ("u", 1, 0), ("t", 1, 2)]
    m = [Message(topic=t, partition=p, offset=o, value=b"v") for t, p, o in where]
    chunks = librdkafka_records.clean_chunks(m)
    assert {(tp.topic, tp.partition): [r.offset for r in rs] for tp, rs in chunks.items()} == {
        ("t", 1): [0, 1, 2], ("t", 2): [0], ("u", 1): [0]}  # fmt: skip
    one = librdkafka_records.clean_chunks(m[:3], "t")
    assert {tp.partition: [r.offset for r in rs] for tp, rs in one.items()} == {1: [0, 1], 2: [0]}


def test_an_error_anywhere_makes_no_records_and_is_not_swallowed():
    eof = Message(topic="t", partition=0, offset=5, error=KafkaError(KafkaError._PARTITION_EOF))
    for at in (0, 3, 6):
        messages = [Message(topic="t", partition=0, offset=i, value=b"v") for i in range(6)]
        messages.insert(at, eof)
        assert c_runs(messages, False) is None
        assert librdkafka_records.clean_chunks(messages, "t") is None
        chunks, errors, ends = librdkafka_records.by_partition(messages, "t")
        assert [r.offset for rs in chunks.values() for r in rs] == list(range(6))
        assert errors == [] and [(tp.partition, o) for tp, o in ends.items()] == [(0, 5)]


def test_runs_hold_no_reference_too_many_or_too_few():
    messages = [Message(topic="t", partition=i % 3, offset=i, value=b"v" * i) for i in range(60)]
    before = [sys.getrefcount(m) for m in messages], [sys.getrefcount(m.value()) for m in messages]
    for _ in range(100):
        del _
        made = c_runs(messages, True)
        del made
        assert c_runs([*messages, Message(error=KafkaError(1))], False) is None
    after = [sys.getrefcount(m) for m in messages], [sys.getrefcount(m.value()) for m in messages]
    assert after == before


def test_a_message_subclass_is_read_through_its_own_methods():
    """An override of `error`, `partition` or `value` is what Python code would read, so
    what the twin reads: the probed fields are for `Message` itself only."""

    class Moved(Message):  # type: ignore[misc]
        def partition(self) -> int:  # type: ignore[override]
            return 7

        def value(self) -> bytes:  # type: ignore[override]
            return b"moved"

    class Failed(Message):  # type: ignore[misc]
        def error(self) -> Any:  # type: ignore[override]
            return KafkaError(KafkaError._BAD_MSG)

    messages = [Message(topic="t", partition=0, value=b"a"), Moved(topic="t", partition=0)]
    assert shown(c_runs(messages, False)) == shown(python_runs(messages, False))
    assert [k for k, _ in c_runs(messages, False)] == [0, 7]
    assert c_runs([*messages, Failed(topic="t", partition=0)], True) is None


def test_a_list_changed_while_runs_are_made_is_an_error():
    messages = [Message(topic="t", partition=0, value=b"v" * 100) for _ in range(100)]

    def shrink(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and messages:
            messages.pop()

    with collecting_at_every_allocation(shrink), pytest.raises(RuntimeError, match="size"):
        c_runs(messages, False)


@pytest.mark.parametrize("messages", [(), (Message(value=b"x"),), [Message(value=b"x"), b"x"]])
def test_runs_refuse_anything_but_a_list_of_messages(messages):
    with pytest.raises(TypeError):
        c_runs(messages, False)


def test_a_class_the_probe_cannot_read_is_read_through_its_methods(rebinds):
    """A message class whose fields the probe does not find (here a Python class: mutable,
    its methods could change) leaves every read to the methods."""
    from worker.sources.kafka._librdkafka_wrap import bind

    class Plain:
        def __init__(self, partition: int, value: bytes | None) -> None:
            self._p, self._v = partition, value

        def error(self) -> None:
            return None

        def topic(self) -> str:
            return "t"

        def partition(self) -> int:
            return self._p

        def value(self) -> bytes | None:
            return self._v

    bind(LibrdkafkaRecord, Plain)
    assert _librdkafka_wrap.direct() is None
    made = c_runs([Plain(0, b"a"), Plain(0, None), Plain(1, b"bc")], True)
    assert [(k, [(r.value, r.serialized_value_size) for r in rs]) for k, rs in made] == [
        (("t", 0), [(b"a", 1), (None, -1)]), (("t", 1), [(b"bc", 2)])]  # fmt: skip
    bind(LibrdkafkaRecord, Message)
    assert _librdkafka_wrap.direct() is not None


def _the_runs_in_the_making() -> list[list[Any]]:
    """Lists that look like `runs`' result while it is built (for hostile code to empty)."""

    def looks_so(o: Any) -> bool:
        return (type(o) is list and bool(o) and type(o[0]) is tuple and len(o[0]) == 2
                and type(o[0][1]) is list and bool(o[0][1])
                and type(o[0][1][0]) is LibrdkafkaRecord)  # fmt: skip

    return [o for o in gc.get_objects() if looks_so(o)]


def test_python_code_run_mid_call_cannot_free_the_run_being_filled():
    """A gc callback that empties every list it finds like the result: the run being
    appended to was freed with it, and written to (valgrind: invalid write in
    PyList_Append; PYTHONMALLOC=debug: fatal error) before the fix."""
    messages = [Message(topic="t", partition=i // 50, value=b"v%d" % i) for i in range(400)]
    cleared: list[int] = []

    def clear(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            for found in _the_runs_in_the_making():
                found.clear()
                cleared.append(1)

    with collecting_at_every_allocation(clear):
        made = c_runs(messages, False)
    assert not cleared  # the result is out of the collector's sight until returned
    assert [(k, [r._message for r in rs]) for k, rs in made] == [
        (p, messages[p * 50 : p * 50 + 50]) for p in range(8)
    ]


def test_a_topics_own_comparison_cannot_free_the_run_being_filled():
    """Python code without a gc callback: a topic (any object, for `Message`) whose `__eq__`
    empties the result mid-call."""

    class Topic(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            for found in _the_runs_in_the_making():
                found.clear()
            return str.__eq__(self, other)

    messages = [Message(topic=Topic("t"), partition=0, value=b"v%d" % i) for i in range(50)]
    made = c_runs(messages, True)
    assert [(k, len(rs)) for k, rs in made] == [(("t", 0), 50)]


def test_code_run_by_bind_releasing_the_old_binding_finds_the_new_one_whole(rebinds):
    """Releasing the old binding's references can run Python code (here a `__del__`) that
    wraps: it must find the new class with its own offsets, not the old class's (a heap
    overflow, abort, before the fix)."""
    from worker.sources.kafka._librdkafka_wrap import bind

    class Big:
        __slots__ = (*(f"p{i}" for i in range(40)), "_message", "serialized_value_size", "value")

    messages = [Message(topic="t", partition=0, value=b"x" * 20) for _ in range(50)]
    seen: list[Any] = []

    class Dying:
        def __del__(self) -> None:
            seen.extend(r for _, rs in c_runs(messages, False) for r in rs)

    class FakeMessage:
        value = Dying()
        error = partition = topic = Message.error

    bind(Big, FakeMessage)
    del FakeMessage.value  # the binding holds the last reference to the Dying object
    bind(LibrdkafkaRecord, Message)
    assert [(type(r), r.value, r.serialized_value_size) for r in seen] == [
        (LibrdkafkaRecord, b"x" * 20, 20)
    ] * 50


def test_runs_compare_the_runs_key_first_as_groupby_does():
    class Name:
        def __init__(self, name: str) -> None:
            self.name = name

        def __eq__(self, other: object) -> bool:  # "A" equals anything, "B" nothing
            return self.name == "A"

        __hash__ = object.__hash__

    messages = [Message(topic=Name(n), partition=0, value=b"v") for n in "AB"]
    assert shown(c_runs(messages, True)) == shown(python_runs(messages, True))
    assert len(c_runs(messages, True)) == 1


@pytest.mark.parametrize("error", [0, False, "", b"", (), 0.0])
def test_any_error_but_none_makes_no_records_in_c_and_twin(error):
    """A false error object (not from a broker: `Message` takes any) is still an error."""
    messages = [Message(topic="t", partition=0, value=b"v"), Message(topic="t", error=error)]
    assert c_runs(messages, False) is None
    assert python_runs(messages, False) is None
