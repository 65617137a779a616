"""Event filtering with Lambda's (EventBridge) pattern syntax, before the handler is invoked.

A pattern is a JSON object. A key holding an object matches a nested object;
a key holding a list matches a value by any of its matchers: a literal
(string, number, true/false, null, "" for empty), or an operator object
(`prefix`, `suffix`, `equals-ignore-case`, `anything-but`, `numeric`,
`exists`). Keys are ANDed; `"$or": [pattern, ...]` ORs sub-patterns; the
configured patterns are ORed. Numbers match by their JSON text, so 300 does
not match 300.0 and "300" (a string) matches no number. A value that is a
list matches when any element does.

Kafka records are matched as `{topic, partition, offset, timestamp,
timestampType, key (UTF-8), value (decoded JSON)}`, Kinesis records as
`{partitionKey, sequenceNumber, approximateArrivalTimestamp, data}`. When the
value is not JSON, a pattern on it does not match (Lambda drops the record);
a pattern only on metadata still can.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

_MISSING = object()
Matcher = Callable[[Any], bool]  # given the field's value, or _MISSING


class PatternError(ValueError):
    """A filter pattern that is not valid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class _Object:
    fields: tuple[tuple[str, _Object | tuple[Matcher, ...]], ...]
    alternatives: tuple[_Object, ...] = ()  # from "$or"

    def match(self, doc: Any) -> bool:
        if not isinstance(doc, dict):
            return False
        for name, node in self.fields:
            value = doc.get(name, _MISSING)
            if isinstance(node, _Object):
                if value is _MISSING or not node.match(value):
                    return False
            elif not _leaf(node, value):
                return False
        return not self.alternatives or any(alt.match(doc) for alt in self.alternatives)


def _leaf(matchers: tuple[Matcher, ...], value: Any) -> bool:
    if isinstance(value, list):
        return any(m(v) for v in value for m in matchers)
    return any(m(value) for m in matchers)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number_text(v: Any) -> str:
    return json.dumps(v)


def _literal(lit: Any) -> Matcher:
    if lit is None:
        return lambda v: v is None
    if isinstance(lit, bool):
        return lambda v: isinstance(v, bool) and v is lit
    if _is_number(lit):
        text = _number_text(lit)
        return lambda v: _is_number(v) and _number_text(v) == text
    return lambda v: isinstance(v, str) and v == lit


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric(spec: Any, where: str) -> Matcher:
    if not isinstance(spec, list) or not spec or len(spec) % 2:
        raise PatternError(f"{where}: numeric needs [op, number, ...], got {spec!r}")
    checks = []
    for op, bound in zip(spec[::2], spec[1::2], strict=True):
        if op not in _NUMERIC_OPS or not _is_number(bound):
            raise PatternError(f"{where}: numeric {op!r} {bound!r} (ops: <, <=, =, >, >=)")
        checks.append((_NUMERIC_OPS[op], bound))
    return lambda v: _is_number(v) and all(f(v, b) for f, b in checks)


def _string_op(name: str, arg: Any, where: str) -> Matcher:
    if not isinstance(arg, str):
        raise PatternError(f"{where}: {name} needs a string, got {arg!r}")
    if name == "prefix":
        return lambda v: isinstance(v, str) and v.startswith(arg)
    if name == "suffix":
        return lambda v: isinstance(v, str) and v.endswith(arg)
    folded = arg.casefold()
    return lambda v: isinstance(v, str) and v.casefold() == folded


def _anything_but(arg: Any, where: str) -> Matcher:
    if isinstance(arg, dict):
        if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix"):
            raise PatternError(f"{where}: anything-but takes values, prefix or suffix: {arg!r}")
        name, inner = next(iter(arg.items()))
        excluded = _string_op(name, inner, where)
    else:
        values = arg if isinstance(arg, list) else [arg]
        if not values or any(isinstance(x, dict | list) for x in values):
            raise PatternError(f"{where}: anything-but needs values, got {arg!r}")
        literals = [_literal(x) for x in values]

        def excluded(v: Any) -> bool:
            return any(m(v) for m in literals)

    return lambda v: v is not _MISSING and not excluded(v)


def _exists(arg: Any, where: str) -> Matcher:
    if not isinstance(arg, bool):
        raise PatternError(f"{where}: exists needs true or false, got {arg!r}")
    if arg:
        return lambda v: v is not _MISSING and not isinstance(v, dict)
    return lambda v: v is _MISSING


def _matcher(item: Any, where: str) -> Matcher:
    if not isinstance(item, dict):
        if isinstance(item, list):
            raise PatternError(f"{where}: a matcher cannot be a list: {item!r}")
        return _literal(item)
    if len(item) != 1:
        raise PatternError(f"{where}: an operator object has one key, got {item!r}")
    name, arg = next(iter(item.items()))
    if name in ("prefix", "suffix", "equals-ignore-case"):
        return _string_op(name, arg, where)
    if name == "anything-but":
        return _anything_but(arg, where)
    if name == "numeric":
        return _numeric(arg, where)
    if name == "exists":
        return _exists(arg, where)
    raise PatternError(f"{where}: unknown operator {name!r}")


def _object(obj: Any, where: str) -> _Object:
    if not isinstance(obj, dict) or not obj:
        raise PatternError(f"{where}: a pattern is a non-empty JSON object, got {obj!r}")
    fields: list[tuple[str, _Object | tuple[Matcher, ...]]] = []
    alternatives: tuple[_Object, ...] = ()
    for name, node in obj.items():
        at = f"{where}.{name}" if where else name
        if name == "$or":
            if not isinstance(node, list) or len(node) < 2:
                raise PatternError(f"{at}: $or needs a list of at least two patterns")
            alternatives = tuple(_object(alt, f"{at}[{i}]") for i, alt in enumerate(node))
        elif isinstance(node, dict):
            fields.append((name, _object(node, at)))
        elif isinstance(node, list) and node:
            fields.append((name, tuple(_matcher(item, at) for item in node)))
        else:
            raise PatternError(f"{at}: must be an object or a non-empty list, got {node!r}")
    return _Object(tuple(fields), alternatives)


def compile_pattern(text: str) -> _Object:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PatternError(f"not valid JSON: {exc}") from None
    return _object(obj, "")


def _mentions(node: _Object, name: str) -> bool:
    return any(n == name for n, _ in node.fields) or any(
        _mentions(alt, name) for alt in node.alternatives
    )


class RecordFilter:
    """Keeps the records that match any pattern; the others are counted and committed unseen."""

    def __init__(self, patterns: Sequence[str], source_name: str) -> None:
        self._patterns = [compile_pattern(p) for p in patterns]
        self._kinesis = source_name == "kinesis"
        self._body = "data" if self._kinesis else "value"
        self._needs_body = [_mentions(p, self._body) for p in self._patterns]

    def keep(self, records: Sequence[Any]) -> list[Any]:
        return [r for r in records if self.matches(r)]

    def matches(self, record: Any) -> bool:
        doc = self._metadata(record)
        decoded = False
        for pattern, needs_body in zip(self._patterns, self._needs_body, strict=True):
            if needs_body and not decoded:
                decoded = True
                # Not JSON: the body stays missing and patterns on it cannot match.
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    doc[self._body] = orjson.loads(record.value)
            if needs_body and self._body not in doc:
                continue
            if pattern.match(doc):
                return True
        return False

    def _metadata(self, r: Any) -> dict[str, Any]:
        if self._kinesis:
            return {
                "partitionKey": r.key.decode() if isinstance(r.key, bytes) else r.key,
                "sequenceNumber": r.sequence_number,
                "approximateArrivalTimestamp": r.timestamp_ms / 1000.0,
            }
        try:
            key = r.key.decode() if r.key is not None else None
        except UnicodeDecodeError:
            key = None
        return {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": r.timestamp_ms,
            "timestampType": "LOG_APPEND_TIME"
            if getattr(r, "timestamp_type", 0) == 1
            else "CREATE_TIME",
            "key": key,
        }
