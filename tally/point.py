"""Points: the Kafka record of one series' partial aggregate over a short interval.

Fields and their JSON types come from ``schemas/point.json``.  Encoding is compact JSON;
decoding validates every field and raises :class:`PointError` naming what is wrong, so a
consumer can count and side-output a bad record instead of crashing.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from tally.schema import point_schema
from tally.series import SeriesId

SCHEMA_VERSION = 1
_JSON_TYPES = {"integer": int, "number": (int, float), "string": str, "object": dict}


class PointError(ValueError):
    """A record that is not a valid point; the message says which field and why."""


def from_value(series: SeriesId, metric_type: str, ts_ms: int, value: float, pid: str, seq: int,
               count: float = 1.0) -> dict[str, Any]:
    """A point holding one raw event (count weighted by 1/sample-rate when sampled)."""
    return {
        "v": SCHEMA_VERSION, "tenant": series.tenant, "name": series.name,
        "tags": series.tag_dict, "type": metric_type, "ts": int(ts_ms),
        "sid": series.id, "series": series.key,
        "count": float(count), "sum": float(value) * float(count),
        "min": float(value), "max": float(value), "last": float(value),
        "pid": pid, "seq": int(seq),
    }


def encode(point: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a point."""
    return json.dumps(point, separators=(",", ":"), allow_nan=False).encode()


def validate(point: Any) -> dict[str, Any]:
    """Return the point if every field matches the schema, else raise PointError."""
    if not isinstance(point, dict):
        raise PointError(f"point must be a JSON object, got {type(point).__name__}")
    schema = point_schema()
    props = schema["properties"]
    missing = [f for f in schema["required"] if f not in point]
    if missing:
        raise PointError(f"missing field(s) {missing}")
    extra = sorted(set(point) - set(props))
    if extra:
        raise PointError(f"unknown field(s) {extra}")
    for name, spec in props.items():
        value = point[name]
        expected = _JSON_TYPES[spec["type"]]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise PointError(f"field {name!r} must be {spec['type']}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise PointError(f"field {name!r} must be finite, got {value}")
        if "const" in spec and value != spec["const"]:
            raise PointError(f"unsupported schema version {value!r} (expected {spec['const']})")
        if "enum" in spec and value not in spec["enum"]:
            raise PointError(f"field {name!r} must be one of {spec['enum']}, got {value!r}")
        if spec.get("minLength") and len(value) < spec["minLength"]:
            raise PointError(f"field {name!r} must not be empty")
        if "minimum" in spec and value < spec["minimum"]:
            raise PointError(f"field {name!r} must be >= {spec['minimum']}, got {value}")
    if point["tags"] and not all(isinstance(v, str) for v in point["tags"].values()):
        raise PointError("tag values must be strings")
    if point["min"] > point["max"]:
        raise PointError(f"min {point['min']} > max {point['max']}")
    return point


def decode(data: bytes) -> dict[str, Any]:
    """Parse and validate one encoded point."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PointError(f"not JSON: {exc}") from None
    return validate(obj)
