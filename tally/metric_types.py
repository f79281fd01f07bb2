"""The kinds of metric Tally accepts and what each one aggregates.

Kept apart from ``tally.aggregate`` so parsers, schemas and the query API can name a type
without pulling in aggregation code.
"""

from __future__ import annotations

import enum

__all__ = ["MetricType"]


class MetricType(enum.Enum):
    """A metric kind; the value is its lower-case name as used on the wire and in storage."""

    COUNTER = "counter"
    GAUGE = "gauge"
    TIMER = "timer"
    HISTOGRAM = "histogram"
    DISTRIBUTION = "distribution"
    SET = "set"

    @property
    def carries_sketch(self) -> bool:
        """True for types whose aggregates keep a quantile sketch (timer, histogram,
        distribution): their percentiles must stay mergeable across hosts and tiers."""
        return self in _SKETCH_TYPES

    @classmethod
    def parse(cls, name: str) -> MetricType:
        """Return the type named ``name`` (case-insensitive); ValueError lists valid names."""
        try:
            return cls(name.lower())
        except (ValueError, AttributeError):
            valid = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown metric type {name!r}; expected one of: {valid}") from None


_SKETCH_TYPES = frozenset({MetricType.TIMER, MetricType.HISTOGRAM, MetricType.DISTRIBUTION})
