"""Points and series registrations: the records producers write to Kafka.

Fields and their JSON types come from ``schemas/point.json`` and ``schemas/series.json``.
Encoding is compact JSON; decoding validates every field and raises :class:`PointError`
naming what is wrong, so a consumer can count and side-output a bad record instead of
crashing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Mapping

from tally.schema import point_schema, series_schema
from tally.series import SeriesId
from tally.sketch import Sketch, SketchDecodeError

SCHEMA_VERSION = 1
SKETCH_TYPES = frozenset({"ms", "h", "d"})
_JSON_TYPES = {"integer": int, "number": (int, float), "string": str, "object": dict, "null": type(None),
               "array": list}


class PointError(ValueError):
    """A record that is not a valid point; the message says which field and why."""


def sketch_field(sketch: Sketch | None) -> str | None:
    """The ``sk`` field of a point: base64 of the encoded sketch, or None."""
    return None if sketch is None else base64.b64encode(sketch.to_bytes()).decode()


def from_value(series: SeriesId, metric_type: str, ts_ms: int, value: float, pid: str, seq: int,
               count: float = 1.0, rollups=None) -> dict[str, Any]:
    """A point holding one raw event (count weighted by 1/sample-rate when sampled).

    ``rollups`` (a :class:`tally.rollup.Rollups`, the series' mapping) sets the point's
    ``sid`` and ``rsids``; without it the point has no ``rsids`` field at all."""
    value = float(value)
    sketch = Sketch().add(value, count) if metric_type in SKETCH_TYPES else None
    point = {
        "v": SCHEMA_VERSION, "tenant": series.tenant, "sid": series.id, "type": metric_type,
        "ts": int(ts_ms), "count": float(count), "sum": value * float(count),
        "min": value, "max": value, "last": value, "sk": sketch_field(sketch),
        "pid": pid, "seq": int(seq),
    }
    return apply_rollups(point, rollups)


def apply_rollups(point: dict[str, Any], rollups) -> dict[str, Any]:
    """Set a point's ``sid`` and ``rsids`` from its series' rollup mapping
    (:class:`tally.rollup.Rollups`; None: unchanged); returns the point."""
    if rollups is not None:
        point["sid"] = rollups.sid
        if rollups.rsids:
            point["rsids"] = list(rollups.rsids)
    return point


TICK_TYPE = "w"


def tick(ts_ms: int, pid: str) -> dict[str, Any]:
    """A watermark tick: tells the job that this producer has sent everything before ts_ms
    on the partition it is written to.  Producers send one to every partition so a quiet
    partition never holds event time back; ticks are never aggregated or deduplicated."""
    return {"v": SCHEMA_VERSION, "tenant": "_tally", "sid": 0, "type": TICK_TYPE, "ts": int(ts_ms),
            "count": 0.0, "sum": 0.0, "min": 0.0, "max": 0.0, "last": 0.0, "sk": None, "pid": pid, "seq": 0}


def series_record(series: SeriesId, metric_type: str) -> dict[str, Any]:
    """The registration record naming a series and its metric type (schemas/series.json)."""
    return {"v": SCHEMA_VERSION, "tenant": series.tenant, "sid": series.id, "name": series.name,
            "tags": series.tag_dict, "type": metric_type, "series": series.key}


def encode(record: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a point or series record."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def _check_fields(record: Any, schema: dict, what: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise PointError(f"{what} must be a JSON object, got {type(record).__name__}")
    props = schema["properties"]
    missing = [f for f in schema["required"] if f not in record]
    if missing:
        raise PointError(f"missing field(s) {missing}")
    extra = sorted(set(record) - set(props))
    if extra:
        raise PointError(f"unknown field(s) {extra}")
    for name, spec in props.items():
        if name not in record:
            continue  # an optional field (not in "required"), e.g. a point's rsids
        value = record[name]
        allowed = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if isinstance(value, bool) or not isinstance(value, tuple(_flatten(_JSON_TYPES[t] for t in allowed))):
            raise PointError(f"field {name!r} must be {' or '.join(allowed)}, got {type(value).__name__}")
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
        if isinstance(value, list):
            item_types = tuple(_flatten(_JSON_TYPES[t] for t in [spec["items"]["type"]]))
            if any(isinstance(v, bool) or not isinstance(v, item_types) for v in value):
                raise PointError(f"field {name!r} must be an array of {spec['items']['type']}")
    return record


def _flatten(types):
    for t in types:
        yield from (t if isinstance(t, tuple) else (t,))


def validate(point: Any) -> dict[str, Any]:
    """Return the point if every field matches the schema, else raise PointError."""
    _check_fields(point, point_schema(), "point")
    if point["min"] > point["max"]:
        raise PointError(f"min {point['min']} > max {point['max']}")
    if point["type"] == TICK_TYPE:
        return point
    if point["count"] <= 0:
        raise PointError(f"count must be > 0, got {point['count']}")
    if point["type"] in SKETCH_TYPES:
        if point["sk"] is None:
            raise PointError(f"field 'sk' is required for type {point['type']!r}")
        try:
            Sketch.from_bytes(base64.b64decode(point["sk"], validate=True))
        except (binascii.Error, SketchDecodeError) as exc:
            raise PointError(f"field 'sk' is not a valid sketch: {exc}") from None
    elif point["sk"] is not None:
        raise PointError(f"field 'sk' must be null for type {point['type']!r}")
    return point


def validate_series(record: Any) -> dict[str, Any]:
    """Return the series registration if it matches the schema, else raise PointError."""
    _check_fields(record, series_schema(), "series record")
    if not all(isinstance(v, str) for v in record["tags"].values()):
        raise PointError("tag values must be strings")
    if record["type"] not in series_schema()["properties"]["type"]["enum"]:
        raise PointError(f"series type must be one of {series_schema()['properties']['type']['enum']}, "
                         f"got {record['type']!r}")
    return record


def decode(data: bytes) -> dict[str, Any]:
    """Parse and validate one encoded point."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PointError(f"not JSON: {exc}") from None
    return validate(obj)
