"""Lambda's (EventBridge) filter pattern syntax: compiling patterns and matching documents.

Pure: it knows JSON documents, not records; `filters` builds each record's
document by the source's Lambda shape, and the config validates patterns here.

A pattern is a JSON object. A key holding an object matches a nested object;
a key holding a list matches a value by any of its matchers: a literal
(string, number, true/false, null, "" for empty), or an operator object
(`prefix`, `suffix`, `equals-ignore-case`, `anything-but`, `numeric`,
`exists`). Keys are ANDed; `"$or": [pattern, ...]` ORs sub-patterns; the
configured patterns are ORed. Numbers match by their JSON text, so 300 does
not match 300.0 and "300" (a string) matches no number; an integer past 64
bits matches exactly (the filter then decodes values exactly). A pattern nests
at most `MAX_DEPTH` levels (deeper is a `PatternError`, a config error). A value that is a
list matches when any element does.

Records are matched as the documents `shapes` describes per source. When the
value is not JSON, a pattern on it does not match (Lambda drops the record);
a pattern only on metadata still can.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

_MISSING = object()
#: Objects and lists nested deeper than this are refused (compiling and matching recurse).
MAX_DEPTH = 64
Matcher = Callable[[Any], bool]  # given the field's value, or _MISSING


class PatternError(ValueError):
    """A filter pattern that is not valid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Pattern:
    fields: tuple[tuple[str, Pattern | tuple[Matcher, ...]], ...]
    alternatives: tuple[Pattern, ...] = ()  # from "$or"
    #: It names an integer past 64 bits, so values must be decoded exactly to match it.
    exact_integers: bool = False

    def match(self, doc: Any) -> bool:
        if not isinstance(doc, dict):
            return False
        for name, node in self.fields:
            value = doc.get(name, _MISSING)
            if isinstance(node, Pattern):
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


def _object(obj: Any, where: str) -> Pattern:
    if not isinstance(obj, dict) or not obj:
        raise PatternError(f"{where}: a pattern is a non-empty JSON object, got {obj!r}")
    fields: list[tuple[str, Pattern | tuple[Matcher, ...]]] = []
    alternatives: tuple[Pattern, ...] = ()
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
    return Pattern(tuple(fields), alternatives)


def _shape(obj: Any) -> tuple[int, bool]:
    """(nesting depth, whether an integer past 64 bits appears), without recursion."""
    deepest, big, stack = 0, False, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, int) and not isinstance(node, bool):
            big = big or not -(2**63) <= node < 2**64
    return deepest, big


def compile_pattern(text: str) -> Pattern:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PatternError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise PatternError(f"nested deeper than {MAX_DEPTH} levels") from None
    depth, big = _shape(obj)
    if depth > MAX_DEPTH:
        raise PatternError(f"nested {depth} levels deep; at most {MAX_DEPTH} are allowed")
    return replace(_object(obj, ""), exact_integers=big)


def mentions(node: Pattern, name: str) -> bool:
    """True if the pattern looks at the top-level field `name` (so the value must be decoded)."""
    return any(n == name for n, _ in node.fields) or any(
        mentions(alt, name) for alt in node.alternatives
    )
