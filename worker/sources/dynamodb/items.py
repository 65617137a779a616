"""DynamoDB JSON (AttributeValues) to plain Python values, with boto3's TypeDeserializer.

Kept apart so only a handler that asks for `record.deserialized` imports boto3
(the `streamworker[dynamodb]` extra); the wire form carries binary values as
base64, which the deserializer wants as bytes again.
"""

from __future__ import annotations

import base64
from typing import Any

try:
    from boto3.dynamodb.types import TypeDeserializer
except ImportError:  # pragma: no cover - the extra is not installed
    TypeDeserializer = None

_deserializer = TypeDeserializer() if TypeDeserializer is not None else None


def plain(image: dict[str, Any] | None) -> dict[str, Any] | None:
    if image is None:
        return None
    if _deserializer is None:
        raise RuntimeError("record.deserialized needs boto3: pip install 'streamworker[dynamodb]'")
    return {k: _deserializer.deserialize(_bytes(v)) for k, v in image.items()}


def _bytes(value: dict[str, Any]) -> dict[str, Any]:
    ((kind, inner),) = value.items()
    if kind == "B":
        return {"B": base64.b64decode(inner)}
    if kind == "BS":
        return {"BS": [base64.b64decode(b) for b in inner]}
    if kind == "M":
        return {"M": {k: _bytes(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [_bytes(v) for v in inner]}
    return value
