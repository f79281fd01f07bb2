"""The aggregate of one series over an interval: the value inside every point and bucket.

An ``Aggregate`` is a mutable value object, like ``Sketch``: ``add`` and ``merge`` update it
in place and return it, so hot paths (agent flush, Flink reduce) avoid allocating; callers
that must keep an input intact call ``copy()`` first.  It is never empty - it is built from
one value with ``Aggregate.of`` - so min, max and last are always real numbers and no
sentinel values leak into storage or JSON.

``merge`` is commutative and associative: count, min, max and last exactly (last is the
maximum of ``(last_time_ms, last)``, so an event-time tie goes to the larger value), sum up
to float rounding, and the sketch exactly for integral weights.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping, NamedTuple

from tally.sketch import DEFAULT_ALPHA, Sketch

__all__ = ["Aggregate", "AggregateDecodeError", "AggregateResult"]

_FORMAT_VERSION = 1
_FLAG_HAS_SKETCH = 0x01
# version, flags, count, sum, min, max, last, last_time_ms; the encoded sketch follows.
_HEADER = struct.Struct("<BBdddddq")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_REQUIRED_KEYS = ("count", "sum", "min", "max", "last", "last_time_ms")


class AggregateDecodeError(ValueError):
    """Raised by ``from_bytes``/``from_dict`` when the input is not a valid aggregate."""


class AggregateResult(NamedTuple):
    """The plain numbers of an aggregate, as served by the query API."""

    count: float
    sum: float
    min: float
    max: float
    avg: float
    last: float


@dataclass(slots=True)
class Aggregate:
    """Weighted count, sum, min, max, last-by-event-time and an optional quantile sketch.

    ``count`` is the total weight: a value sampled at rate 0.1 counts 10 and adds
    ``10 * value`` to ``sum``.  Construct directly only when decoding; use ``of`` otherwise.
    """

    count: float
    sum: float
    min: float
    max: float
    last: float
    last_time_ms: int
    sketch: Sketch | None = None

    def __post_init__(self) -> None:
        if not (_is_number(self.count) and 0.0 < self.count < math.inf):
            raise ValueError(f"count must be finite and > 0, got {self.count!r}")
        for name in ("sum", "min", "max", "last"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            # -0.0 + 0.0 == +0.0: one zero keeps min/max/last ties order-independent.
            setattr(self, name, float(value) + 0.0)
        if not self.min <= self.last <= self.max:
            raise ValueError(f"need min <= last <= max, got {self.min}, {self.last}, {self.max}")
        self.count = float(self.count)
        self.last_time_ms = _check_time_ms(self.last_time_ms)
        if self.sketch is not None and not isinstance(self.sketch, Sketch):
            raise ValueError(f"sketch must be a Sketch or None, got {type(self.sketch).__name__}")

    @classmethod
    def of(
        cls,
        value: float,
        time_ms: int,
        count: float = 1.0,
        *,
        with_sketch: bool = False,
        alpha: float = DEFAULT_ALPHA,
    ) -> Aggregate:
        """Build the aggregate of one value observed at ``time_ms`` with weight ``count``.

        Pass ``with_sketch=MetricType.X.carries_sketch`` so timers, histograms and
        distributions keep a sketch of relative accuracy ``alpha``.
        """
        value = _check_value(value)
        count = _check_count(count)
        sketch = Sketch(alpha).add(value, count) if with_sketch else None
        return cls(count, value * count, value, value, value, time_ms, sketch)

    def add(self, value: float, time_ms: int, count: float = 1.0) -> Aggregate:
        """Add one value observed at ``time_ms`` with weight ``count``; returns self.

        Out-of-order adds are fine: ``last`` follows event time, not arrival order.
        """
        value = _check_value(value)
        count = _check_count(count)
        time_ms = _check_time_ms(time_ms)
        self.count += count
        self.sum += value * count
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if (time_ms, value) > (self.last_time_ms, self.last):
            self.last, self.last_time_ms = value, time_ms
        if self.sketch is not None:
            self.sketch.add(value, count)
        return self

    def merge(self, other: Aggregate) -> Aggregate:
        """Merge ``other`` into this aggregate in place; returns self.

        Raises ValueError when exactly one side has a sketch: silently dropping or
        inventing quantile data would make percentiles wrong without anyone noticing.
        """
        if not isinstance(other, Aggregate):
            raise TypeError(f"can only merge an Aggregate, got {type(other).__name__}")
        if (self.sketch is None) != (other.sketch is None):
            raise ValueError("cannot merge an aggregate with a sketch and one without")
        if other is self:
            other = other.copy()
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if (other.last_time_ms, other.last) > (self.last_time_ms, self.last):
            self.last, self.last_time_ms = other.last, other.last_time_ms
        if self.sketch is not None:
            self.sketch.merge(other.sketch)
        return self

    def copy(self) -> Aggregate:
        """Return an independent copy (the sketch is copied too)."""
        sketch = self.sketch.copy() if self.sketch is not None else None
        return Aggregate(
            self.count, self.sum, self.min, self.max, self.last, self.last_time_ms, sketch
        )

    def result(self) -> AggregateResult:
        """Return count, sum, min, max, avg (sum / count) and last."""
        return AggregateResult(
            self.count, self.sum, self.min, self.max, self.sum / self.count, self.last
        )

    # -- JSON transport ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; the sketch, if any, is base64 of ``Sketch.to_bytes``."""
        data: dict[str, Any] = {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "last": self.last,
            "last_time_ms": self.last_time_ms,
        }
        if self.sketch is not None:
            data["sketch"] = base64.b64encode(self.sketch.to_bytes()).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Aggregate:
        """Rebuild from ``to_dict`` output; raises AggregateDecodeError when invalid.

        Unknown keys are ignored so newer writers can add fields during rolling upgrades.
        """
        if not isinstance(data, Mapping):
            raise AggregateDecodeError(f"expected a mapping, got {type(data).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise AggregateDecodeError(f"missing keys: {', '.join(missing)}")
        sketch = None
        encoded = data.get("sketch")
        if encoded is not None:
            try:
                sketch = Sketch.from_bytes(base64.b64decode(encoded, validate=True))
            except (TypeError, ValueError, binascii.Error) as exc:
                raise AggregateDecodeError(f"invalid sketch: {exc}") from exc
        try:
            return cls(*(data[key] for key in _REQUIRED_KEYS), sketch)
        except (TypeError, ValueError) as exc:
            raise AggregateDecodeError(str(exc)) from exc

    # -- binary transport -------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Encode as a fixed 50-byte header (version 1) followed by the encoded sketch."""
        flags = _FLAG_HAS_SKETCH if self.sketch is not None else 0
        header = _HEADER.pack(
            _FORMAT_VERSION, flags, self.count, self.sum, self.min, self.max, self.last,
            self.last_time_ms,
        )
        return header + (self.sketch.to_bytes() if self.sketch is not None else b"")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Aggregate:
        """Decode ``to_bytes`` output; raises AggregateDecodeError when invalid."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise AggregateDecodeError(
                f"truncated input: {len(data)} of {_HEADER.size} header bytes"
            )
        version, flags, *numbers, time_ms = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise AggregateDecodeError(f"unsupported aggregate format version {version}")
        if flags & ~_FLAG_HAS_SKETCH:
            raise AggregateDecodeError(f"unknown flag bits 0x{flags:02x}")
        rest = data[_HEADER.size :]
        sketch = None
        if flags & _FLAG_HAS_SKETCH:
            try:
                sketch = Sketch.from_bytes(rest)
            except ValueError as exc:
                raise AggregateDecodeError(f"invalid sketch: {exc}") from exc
        elif rest:
            raise AggregateDecodeError(f"{len(rest)} trailing bytes")
        try:
            return cls(*numbers, time_ms, sketch)
        except ValueError as exc:
            raise AggregateDecodeError(str(exc)) from exc


def _is_number(value: object) -> bool:
    # bool is an int subclass; a True count is a bug upstream, not a weight of 1.
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_value(value: float) -> float:
    if not (_is_number(value) and math.isfinite(value)):
        raise ValueError(f"value must be a finite number, got {value!r}")
    return float(value) + 0.0  # normalise -0.0, see __post_init__


def _check_count(count: float) -> float:
    if not (_is_number(count) and 0.0 < count < math.inf):
        raise ValueError(f"count must be finite and > 0, got {count!r}")
    return float(count)


def _check_time_ms(time_ms: int) -> int:
    if not isinstance(time_ms, Integral) or isinstance(time_ms, bool):
        raise ValueError(f"time must be integer epoch milliseconds, got {time_ms!r}")
    time_ms = int(time_ms)  # numpy integers in, plain ints out
    if not _INT64_MIN <= time_ms <= _INT64_MAX:
        raise ValueError(f"time {time_ms} ms is outside the int64 range")
    return time_ms
