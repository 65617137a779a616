"""Lambda/EventBridge filter patterns: every operator, ORs and ANDs, non-JSON, numbers as text."""

import json

import pytest

from worker.config_load import ConfigError, load_config
from worker.lambda_compat.filters import RecordFilter
from worker.lambda_compat.patterns import PatternError, compile_pattern
from worker.lambda_compat.shapes import shape_of
from worker.testing import (
    MemoryBroker,
    fully_committed,
    make_batch,
    running_worker,
    wait_until,
)


def matches(pattern: dict, value, key: bytes | None = b"dev-1") -> bool:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    (record,) = make_batch([raw], keys=[key], topic="telemetry", partition=3).records
    return RecordFilter([json.dumps(pattern)], shape_of("kafka")).matches(record)


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        # exact strings, numbers, booleans; no case folding
        ({"value": {"status": ["ok"]}}, {"status": "ok"}, True),
        ({"value": {"status": ["ok"]}}, {"status": "OK"}, False),
        ({"value": {"n": [300]}}, {"n": 300}, True),
        ({"value": {"n": [300]}}, {"n": 300.0}, False),  # numbers compare as their text
        ({"value": {"n": [300]}}, {"n": "300"}, False),  # a numeric string is not a number
        ({"value": {"on": [True]}}, {"on": True}, True),
        ({"value": {"on": [True]}}, {"on": 1}, False),
        # null and empty
        ({"value": {"x": [None]}}, {"x": None}, True),
        ({"value": {"x": [None]}}, {}, False),
        ({"value": {"x": [""]}}, {"x": ""}, True),
        ({"value": {"x": [""]}}, {"x": None}, False),
        # OR within a field
        ({"value": {"s": ["a", "b"]}}, {"s": "b"}, True),
        ({"value": {"s": ["a", "b"]}}, {"s": "c"}, False),
        # prefix, suffix, equals-ignore-case
        ({"value": {"id": [{"prefix": "dev-"}]}}, {"id": "dev-7"}, True),
        ({"value": {"id": [{"prefix": "dev-"}]}}, {"id": "gw-7"}, False),
        ({"value": {"f": [{"suffix": ".png"}]}}, {"f": "a.png"}, True),
        ({"value": {"f": [{"suffix": ".png"}]}}, {"f": "a.jpg"}, False),
        ({"value": {"c": [{"equals-ignore-case": "EU"}]}}, {"c": "eu"}, True),
        ({"value": {"c": [{"equals-ignore-case": "EU"}]}}, {"c": "us"}, False),
        # anything-but: values, a single value, a prefix
        ({"value": {"s": [{"anything-but": ["a", "b"]}]}}, {"s": "c"}, True),
        ({"value": {"s": [{"anything-but": ["a", "b"]}]}}, {"s": "a"}, False),
        ({"value": {"s": [{"anything-but": "a"}]}}, {"s": "a"}, False),
        ({"value": {"s": [{"anything-but": {"prefix": "x-"}}]}}, {"s": "x-1"}, False),
        ({"value": {"s": [{"anything-but": {"prefix": "x-"}}]}}, {"s": "y-1"}, True),
        ({"value": {"s": [{"anything-but": ["a"]}]}}, {}, False),  # needs the field
        # numeric ranges, numbers only
        ({"value": {"t": [{"numeric": [">", 10, "<=", 20]}]}}, {"t": 20}, True),
        ({"value": {"t": [{"numeric": [">", 10, "<=", 20]}]}}, {"t": 10}, False),
        ({"value": {"t": [{"numeric": [">", 10, "<=", 20]}]}}, {"t": 15.5}, True),
        ({"value": {"t": [{"numeric": [">", 10]}]}}, {"t": "15"}, False),  # numeric-as-string
        ({"value": {"t": [{"numeric": ["=", 5]}]}}, {"t": 5.0}, True),
        ({"value": {"t": [{"numeric": [">=", 0]}]}}, {"t": True}, False),
        # exists
        ({"value": {"a": [{"exists": True}]}}, {"a": 0}, True),
        ({"value": {"a": [{"exists": True}]}}, {}, False),
        ({"value": {"a": [{"exists": False}]}}, {}, True),
        ({"value": {"a": [{"exists": False}]}}, {"a": None}, False),
        # nested objects, fields ANDed
        ({"value": {"m": {"temp": [{"numeric": [">", 30]}]}, "id": ["d1"]}},
         {"m": {"temp": 31}, "id": "d1"}, True),
        ({"value": {"m": {"temp": [{"numeric": [">", 30]}]}, "id": ["d1"]}},
         {"m": {"temp": 31}, "id": "d2"}, False),
        # array values match when any element does
        ({"value": {"tags": ["hot"]}}, {"tags": ["cold", "hot"]}, True),
        ({"value": {"tags": ["hot"]}}, {"tags": ["cold"]}, False),
        # $or across fields
        ({"value": {"$or": [{"a": [1]}, {"b": [2]}]}}, {"b": 2}, True),
        ({"value": {"$or": [{"a": [1]}, {"b": [2]}]}}, {"a": 2, "b": 1}, False),
    ],
)  # fmt: skip
def test_operators(pattern, value, expected):
    assert matches(pattern, value) is expected


def test_metadata_fields_match_without_touching_the_value():
    assert matches({"partition": [3], "topic": [{"prefix": "tele"}]}, b"not json")
    assert matches({"key": [{"prefix": "dev-"}]}, {"x": 1})
    assert not matches({"key": [{"prefix": "dev-"}]}, {"x": 1}, key=None)


def test_a_non_json_value_never_matches_a_value_pattern():
    assert not matches({"value": {"a": [{"exists": False}]}}, b"\x00\x01 not json")
    assert not matches({"value": {"a": ["x"]}}, b"plain text")


def test_patterns_are_ored():
    f = RecordFilter(['{"value": {"a": [1]}}', '{"value": {"b": [2]}}'], shape_of("kafka"))
    batch = make_batch([b'{"a": 1}', b'{"b": 2}', b'{"c": 3}'])
    assert [r.offset for r in f.keep(batch.records)] == [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        "{}",
        '{"value": {"a": "x"}}',
        '{"value": {"a": []}}',
        '{"value": {"a": [{"numeric": [">"]}]}}',
        '{"value": {"a": [{"numeric": ["~", 1]}]}}',
        '{"value": {"a": [{"wildcard-ish": "x"}]}}',
        '{"value": {"a": [{"prefix": 1}]}}',
        '{"value": {"a": [{"exists": "yes"}]}}',
        '{"value": {"$or": [{"a": [1]}]}}',
    ],
)
def test_an_invalid_pattern_is_rejected(bad):
    with pytest.raises(PatternError):
        compile_pattern(bad)


def test_an_invalid_pattern_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        load_config(None, ['source.topics=["t"]', """filter.patterns=['{"value": 1}']"""], {})
    (line,) = err.value.problems
    assert line.startswith("filter.patterns = ") and "pattern 0" in line


async def test_filtered_records_are_committed_and_counted_but_never_invoked():
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    for i in range(10):
        broker.produce("t", json.dumps({"hot": i % 3 == 0}).encode(), partition=0)
    broker.produce("t", b"not json", partition=0)
    seen: list[int] = []

    async def handler(batch):
        seen.extend(r.offset for r in batch.records)

    settings = {"filter": {"patterns": ['{"value": {"hot": [true]}}']}}
    async with running_worker(handler, broker, ["t"], settings) as w:
        await wait_until(lambda: fully_committed(broker, "test", ["t"]))
        filtered = w.metrics.records_filtered.labels("memory", "t-0").value
    assert seen == [0, 3, 6, 9]
    assert filtered == 7


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b'{"t": 1e400}', {"value": {"t": [{"exists": True}]}}),  # past a double's range
        (b'{"s": "\\ud800", "k": "x"}', {"value": {"k": ["x"]}}),  # an escaped lone surrogate
        (b'\xef\xbb\xbf{"k": "x"}', {"value": {"k": ["x"]}}),  # a UTF-8 byte order mark
    ],
)
def test_json_that_orjson_refuses_still_matches_a_value_pattern(raw, pattern):
    assert matches(pattern, raw)


@pytest.mark.parametrize("raw", [b"NaN", b'{"t": NaN}', b"not json", b'{"k": "x"'])
def test_what_is_not_json_still_never_matches(raw):
    assert not matches({"value": {"t": [{"exists": False}]}}, raw)


def test_an_integer_past_64_bits_in_a_pattern_matches_exactly():
    big = 123456789012345678901234567890
    pattern = {"value": {"n": [big]}}
    assert matches(pattern, b'{"n": 123456789012345678901234567890}')
    assert not matches(pattern, b'{"n": 123456789012345678901234567891}')
    assert not matches(pattern, b'{"n": 1.2345678901234568e+29}')


@pytest.mark.parametrize("depth", [65, 3000])
def test_a_pattern_nested_too_deep_is_a_pattern_error(depth):
    text = '{"a":' * depth + "[1]" + "}" * depth
    with pytest.raises(PatternError, match="levels"):
        compile_pattern(text)


def test_a_pattern_nested_within_the_limit_compiles():
    compile_pattern('{"a":' * 60 + "[1]" + "}" * 60)
