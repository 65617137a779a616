"""The C builder of Lambda's Kafka records (`worker/lambda_compat/_kafka_rows.c`): what
its Python twin gives, for every length's base64 and for odd input, and no reference
leaked or stolen (a refcount slip in C shows up here, not as a crash in production).
The records' shapes against AWS's documented example are in test_lambda_events.py, run
through both builders."""

from __future__ import annotations

import base64
import gc
import sys
import tracemalloc
from typing import Any

import pytest
from confluent_kafka import Message

from worker.lambda_compat import events
from worker.sources.kafka.librdkafka_records import LibrdkafkaRecord
from worker.sources.memory import MemoryRecord

kafka_rows = events._kafka_rows


def _columns(records: list[Any]) -> list[Any]:
    offsets, stamps, kinds, keys, values, headers = events._columns(records)
    names = list(map(events._TIMESTAMP_TYPES.get, kinds, [("CREATE_TIME")] * len(records)))
    return [list(offsets), list(stamps), names, list(keys), list(values), list(headers)]


def test_the_c_module_is_built_where_a_compiler_is():
    """CI installs with gcc: a build that failed there (it is optional, so the install
    would go on) must fail here, not leave Lambda handlers on the slower twin unseen."""
    assert kafka_rows is not None
    assert events._kafka_records is events._c_kafka_records


def test_base64_of_every_length_matches_the_standard_library():
    for n in range(0, 67):
        data = bytes(range(256))[:n] if n < 256 else b""
        for value in (data, bytes(reversed(data)), b"\xff" * n):
            (row,) = kafka_rows("t", 0, [0], [1], ["CREATE_TIME"], [value], [value], [None],
                                events._headers)  # fmt: skip
            assert row["value"] == row["key"] == base64.b64encode(value).decode()


#: librdkafka's timestamp type of message i: mixed, then one type for all (the columns
#: take a shortcut when the records share a type, as a topic's do).
_KINDS = {"mixed": lambda i: 1 + i % 2, "create": lambda i: 1, "log append": lambda i: 2}


@pytest.mark.parametrize("kinds", sorted(_KINDS))
def test_librdkafka_records_build_as_the_twin_builds_them(kinds):
    kind = _KINDS[kinds]
    messages = [
        Message(topic="t", partition=3, offset=i, key=None if i % 3 else b"k%d" % i,
                value=None if i == 4 else b"v" * i, timestamp=(kind(i), 1_700_000_000_000 + i),
                headers=[("h", b"x"), ("n", None)] if i % 5 == 0 else None)
        for i in range(40)
    ]  # fmt: skip
    records = list(map(LibrdkafkaRecord, messages))
    c = events._c_kafka_records("t", 3, records)
    python = events._python_kafka_records("t", 3, records)
    assert c == python
    assert [list(r) for r in c] == [list(r) for r in python]  # field order too
    assert (
        c[4]["value"] is None and "key" not in c[1] and c[0]["headers"] == [{"h": [120]}, {"n": []}]
    )
    names = ["CREATE_TIME" if kind(i) == 1 else "LOG_APPEND_TIME" for i in range(40)]
    assert [r["timestampType"] for r in c] == names
    assert [r.timestamp_type for r in records] == [kind(i) - 1 for i in range(40)]


def test_each_record_owns_its_dict_and_headers_list():
    """A handler that edits one record (Lambda's records are parsed JSON, never shared)
    must not edit another through a shared template or list."""
    rows = events._c_kafka_records("t", 0, [MemoryRecord("t", 0, i, None, b"v", 1) for i in (1, 2)])
    rows[0]["value"] = "changed"
    rows[0]["headers"].append({"x": []})
    assert rows[1]["value"] == "dg==" and rows[1]["headers"] == []
    again = events._c_kafka_records("t", 0, [MemoryRecord("t", 0, 1, None, b"v", 1)])
    assert again[0]["value"] == "dg==" and "x" not in str(again)


def test_bytes_like_keys_and_values_are_encoded_and_other_types_refused_as_binascii_does():
    (row,) = kafka_rows("t", 0, [0], [1], ["CREATE_TIME"], [bytearray(b"ab")],
                        [memoryview(b"abc")], [None], events._headers)  # fmt: skip
    assert row["key"] == "YWI=" and row["value"] == "YWJj"
    for bad in ("text", 5):
        record = MemoryRecord("t", 0, 0, None, bad, 1)  # type: ignore[arg-type]
        for builder in (events._c_kafka_records, events._python_kafka_records):
            with pytest.raises(TypeError):
                builder("t", 0, [record])


def test_columns_that_do_not_fit_are_refused():
    ok = [[0], [1], ["CREATE_TIME"], [None], [b""], [None]]
    with pytest.raises(ValueError, match="values has 2 items, offsets 1"):
        kafka_rows("t", 0, *ok[:4], [b"", b""], ok[5], events._headers)
    with pytest.raises(TypeError, match="stamps must be a list"):
        kafka_rows("t", 0, ok[0], (1,), *ok[2:], events._headers)
    with pytest.raises(TypeError, match="takes 9 arguments"):
        kafka_rows("t", 0, *ok)


def test_a_failing_header_conversion_is_raised_and_a_changing_one_cannot_free_what_is_read():
    def boom(hs: Any) -> Any:
        raise RuntimeError("no")

    columns = _columns([MemoryRecord("t", 0, 0, b"k", b"v", 1, (("h", b"x"),))])
    with pytest.raises(RuntimeError, match="no"):
        kafka_rows("t", 0, *columns, boom)

    # A conversion that replaces the columns' items while its record is being built: the
    # record's items are held, and the next index is read from the changed lists.
    records = [MemoryRecord("t", 0, i, b"k" * 50, b"v" * 50, 1, (("h", b"x"),)) for i in range(3)]
    columns = _columns(records)

    def clear(hs: Any) -> Any:
        for column in columns:
            column[:] = [column[0]] * len(column)
        return []

    rows = kafka_rows("t", 0, *columns, clear)
    assert [r["offset"] for r in rows] == [0, 0, 0]


def test_a_column_shrunk_by_python_code_mid_build_is_refused_not_read_past():
    """`convert`, or a headers object's truth, may run Python code (or let another thread
    run) that shortens a column: the lengths were checked once, before the loop, and the
    next index would be read past the list's end (NULL after a clear, a freed item after a
    pop: a crash or a use after free)."""

    def columns() -> list[Any]:
        values = [bytes([65 + i]) * 1000 for i in range(3)]  # held by it alone: a pop frees
        return [[0, 1, 2], [1] * 3, ["CREATE_TIME"] * 3, [None] * 3, values,
                [[("h", b"x")], None, None]]  # fmt: skip

    for change in (list.clear, lambda column: column.pop()):
        built = columns()

        def convert(hs: Any, built: list[Any] = built, change: Any = change) -> Any:
            for column in built:
                change(column)
            return []

        with pytest.raises(RuntimeError, match="a column changed size"):
            kafka_rows("t", 0, *built, convert)

    class Headers(list):  # type: ignore[type-arg]
        def __bool__(self) -> bool:
            for column in shrunk:
                column.clear()
            return False

    shrunk = [[0, 1], [1, 1], ["x", "x"], [None, None], [b"a", b"b"], [Headers(), None]]
    with pytest.raises(RuntimeError, match="a column changed size"):
        kafka_rows("t", 0, *shrunk, events._headers)


def test_the_result_list_is_not_seen_by_python_code_before_it_is_full():
    """Its slots are NULL until built: `convert` reaching it through the collector and
    reading one would crash the interpreter (so the test only looks for it by identity)."""
    n = 7
    columns = [list(range(n)), [1] * n, ["CREATE_TIME"] * n, [None] * n, [b"v"] * n,
               [[("h", b"x")]] * n]  # fmt: skip
    seen = []

    def convert(hs: Any) -> Any:
        seen.extend(o for o in gc.get_objects() if type(o) is list and len(o) == n)
        gc.collect()
        return []

    rows = kafka_rows("t", 0, *columns, convert)
    assert not any(o is rows for o in seen)
    assert gc.is_tracked(rows) and [r["offset"] for r in rows] == list(range(n))


def test_no_reference_is_leaked_or_stolen():
    value, key = b"v" * 190, b"device-1"
    records = [MemoryRecord("t", 0, 10**12 + i, key, value, 1, ()) for i in range(100)]
    columns = _columns(records)
    before = sys.getrefcount(value), sys.getrefcount(key)
    for _ in range(50):
        rows = kafka_rows("t", 0, *columns, events._headers)
    del rows
    assert (sys.getrefcount(value), sys.getrefcount(key)) == before

    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(20):
            kafka_rows("t", 0, *columns, events._headers)
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            kafka_rows("t", 0, *columns, events._headers)
        grown = tracemalloc.get_traced_memory()[0] - first
    finally:
        tracemalloc.stop()
    # 2,000 calls of 100 records leaking one object a record would be 200,000 objects.
    assert grown < 64 * 1024, grown
